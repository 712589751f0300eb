"""The calibration of the motion-fidelity score: its pairs, its rank correlation, a small run of the table."""

import json

import numpy as np
import pytest

from motiontransfer.evaluation import calibration


def test_world_case_keeps_the_path_and_changes_the_look():
    from motiontransfer.shapes import tracking, world

    case = calibration.world_case(calibration.REPORT_SEED, 32)
    source, perfect, wrong = case["source"], case["perfect"], case["wrong"]
    assert source.shape == perfect.shape == (16, 32, 32, 3) and set(wrong) == set(calibration.WRONG)
    assert not np.array_equal(source[0], perfect[0])                   # another shape, colour and background
    a, b = tracking.object_track(source), tracking.object_track(perfect)
    assert tracking.trajectory_agreement(a, b)["velocity_cosine"] > 0.9
    assert np.array_equal(wrong["reversed"], perfect[::-1]) and np.array_equal(wrong["mirrored"][:, :, ::-1], perfect)
    assert (wrong["still"] == perfect[0]).all()
    shifted = tracking.object_track(wrong["shifted"])
    assert not np.allclose(shifted, b, atol=0.5)                       # ahead on the path
    assert world.SHAPES and calibration.REPORT_SEED != calibration.VALIDATION_SEED


def test_recolour_changes_every_colour_and_keeps_the_layout():
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (2, 8, 8, 3), dtype=np.uint8)
    out = calibration.recolour(frames)
    assert out.shape == frames.shape and out.dtype == np.uint8 and np.abs(out.astype(int) - frames).mean() > 20


def test_spearman_ranks_and_ties():
    assert calibration.spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert calibration.spearman([1, 2, 3, 4], [9, 1, 0, -5]) == pytest.approx(-1.0)
    assert calibration.spearman([1, 2, 3, 4, 5], [1, 100, 2, 3, 4]) == pytest.approx(0.4)   # 1 - 6 * 12 / (5 * 24)
    assert calibration.spearman([1, 1, 2], [3, 3, 4]) == pytest.approx(1.0)
    assert calibration.spearman([1, 2], [1, 2]) is None and calibration.spearman([1, 1, 1], [1, 2, 3]) is None


def test_a_small_calibration_ranks_the_perfect_transfer_first():
    report = calibration.calibrate(clips=2, sizes=(32,), real=False, progress=False)
    (row,) = report["rows"]
    assert row["set"] == "world" and row["clips"] == 2 and row["perfect_not_measured"] == 0
    assert row["wrong"]["still"]["mean"] < row["perfect_mean"]
    assert 0.0 <= row["outranked_all"] <= 1.0
    table = calibration.markdown(json.loads(json.dumps(report)))
    assert "| world | 32 | 2 |" in table and "still: mean" in table
