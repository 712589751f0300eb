"""benchmarks/real_crossing.py: the source's path is measured on the footage itself, so it must be right."""

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "real_crossing.py"


@pytest.fixture(scope="module")
def crossing():
    sys.path.insert(0, str(SCRIPT.parent))              # it draws with side_by_side's labelled_row
    try:
        spec = importlib.util.spec_from_file_location("real_crossing", SCRIPT)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(SCRIPT.parent))
    return module


def _walk(frames: int = 40, size: int = 96) -> tuple[np.ndarray, np.ndarray]:
    """A static textured scene with one dark 8x12 box walking right and up; its true centres (x, y)."""
    rng = np.random.default_rng(0)
    scene = rng.integers(150, 190, (size, size, 3)).astype(np.uint8)
    video = np.repeat(scene[None], frames, axis=0)
    centres = []
    for f in range(frames):
        x, y = 20 + f, 70 - f // 2
        video[f, y - 6:y + 6, x - 4:x + 4] = 20
        centres.append((x, y))
    return video, np.array(centres, np.float64)


def test_source_path_follows_the_one_moving_object(crossing):
    video, truth = _walk()
    path = crossing.source_path(video, (8, 8, 80, 80), start=4, stride=2, frames=16)
    np.testing.assert_allclose(path, truth[4:36:2] - 8, atol=0.01)


def test_two_movers_are_not_measured(crossing):
    video, _ = _walk()
    video[:, 20:26, 60:64] = video[::-1, 20:26, 60:64]      # a second, different object in the window
    video[10:, 20:26, 60:64] = 0
    assert crossing.source_path(video, (8, 8, 80, 80), start=4, stride=2, frames=16) is None


def test_find_windows_prefers_the_longest_walk(crossing):
    video, _ = _walk()
    found = crossing.find_windows(video, side=64, stride=2, step=16)
    assert found and found[0][0] == max(f[0] for f in found) > 0.3


def test_the_empty_scene_can_come_from_a_shot_of_the_clip(crossing):
    video, truth = _walk(frames=60)
    video[:36] = 255 - video[:36]                           # another shot before frame 36
    wrong = crossing.source_path(video, (8, 8, 80, 80), start=38, stride=1, frames=16)
    assert wrong is None or np.abs(wrong - (truth[38:54] - 8)).max() > 5     # the other shot's median
    path = crossing.source_path(video, (8, 8, 80, 80), start=38, stride=1, frames=16, scene=(36, 60))
    np.testing.assert_allclose(path, truth[38:54] - 8, atol=0.01)


def test_dark_path_follows_a_dark_mover_and_ignores_dark_scenery(crossing):
    video, truth = _walk()
    video[:, 60:80, 70:76] = 10                              # a dark post that never moves
    video[:, 10:14, 10:14] = 255                             # noise-sized specks are opened away
    path = crossing.dark_path(video, (8, 8, 80, 80), start=4, stride=2, frames=16)
    np.testing.assert_allclose(path, truth[4:36:2] - 8, atol=0.01)
    empty = np.repeat(video[:1] * 0 + 200, 40, axis=0)
    assert crossing.dark_path(empty, (8, 8, 80, 80), start=4, stride=2, frames=16) is None
