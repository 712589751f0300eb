"""Tests of segmentation and tracking against the world's ground truth: coherence, trajectory agreement."""

import math

import numpy as np
import pytest

from motiontransfer.shapes import tracking as se, world

HELD_OUT_SEED = 424_242            # not a classifier training seed (classifier.CLASSIFIER_TRAIN_SEED + s)


@pytest.fixture(scope="module")
def held_out():
    return world.make_dataset(40, seed=HELD_OUT_SEED)


def _linear_track(frames: int = 8) -> np.ndarray:
    t = np.arange(frames, dtype=np.float64)
    return np.stack([5 + 1.5 * t, 20 - 0.7 * t], axis=1)


def test_segment_object_finds_the_true_centre():
    data = world.make_dataset(60, seed=HELD_OUT_SEED + 1)
    errors = []
    for i, params in enumerate(data["params"]):
        if params.spin != 0:
            continue
        seg = se.segment_object(data["frames"][i])
        errors.append(np.linalg.norm(seg["centres"] - data["centres"][i], axis=1))
        assert (seg["components"] == 1).all() and (seg["largest_share"] == 1).all()
        assert se.coherence(data["frames"][i], segmentation=seg)["one_object"]
    assert len(errors) >= 10
    assert np.median(np.concatenate(errors)) < 0.5


def test_world_clips_are_one_moving_object(held_out):
    for clip in held_out["frames"][:20]:
        c = se.coherence(clip)
        assert c["one_object"] and c["moves"] and c["max_jump"] < 6


def test_two_objects_are_not_one_object():
    a = world.render(world.ClipParams("circle", "red", "black", "linear", 0.25, 0.3, dx=0.1), 32, 8)
    b = world.render(world.ClipParams("square", "red", "black", "linear", 0.75, 0.7, dx=-0.1), 32, 8)
    both = np.maximum(a.frames, b.frames)
    seg = se.segment_object(both)
    assert (seg["components"] == 2).all()
    assert not se.coherence(both)["one_object"]


def test_static_video_does_not_move():
    clip = world.render(world.ClipParams("heart", "yellow", "navy", "linear", 0.5, 0.5), 32, 8)
    c = se.coherence(clip.frames)
    assert c["one_object"] and not c["moves"] and c["max_jump"] < 1e-6


def test_empty_video_has_no_object():
    blank = np.full((4, 32, 32, 3), 128, np.uint8)
    assert np.isnan(se.object_track(blank)).all()
    c = se.coherence(blank)
    assert not c["one_object"] and not c["moves"] and math.isnan(c["max_jump"])


def test_trajectory_agreement_identity_and_reversal():
    track = _linear_track()
    same = se.trajectory_agreement(track, track)
    assert same["velocity_cosine"] == pytest.approx(1.0) and same["centre_error"] == 0.0
    assert same["corr_x"] == pytest.approx(1.0) and same["corr_y"] == pytest.approx(1.0)
    assert se.trajectory_agreement(track, track[::-1])["velocity_cosine"] < 0


def test_trajectory_agreement_guards_still_and_missing_steps():
    still = np.full((6, 2), 10.0)
    assert math.isnan(se.trajectory_agreement(still, still + 0.1)["velocity_cosine"])   # nothing moves
    track = _linear_track(6)
    assert se.trajectory_agreement(track, still)["velocity_cosine"] == 0.0             # one of them still
    gappy = track.copy()
    gappy[2] = np.nan
    r = se.trajectory_agreement(track, gappy)
    assert r["velocity_cosine"] == pytest.approx(1.0) and r["steps"] == 3
    with pytest.raises(ValueError):
        se.trajectory_agreement(track, track[:-1])
