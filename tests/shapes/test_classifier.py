"""Tests of the shapes world's attribute classifier: the shipped weights on held-out world frames."""

import json
import math

import numpy as np
import pytest

from motiontransfer.shapes import classifier as se, world

HELD_OUT_SEED = 424_242            # not a classifier training seed (classifier.CLASSIFIER_TRAIN_SEED + s)


@pytest.fixture(scope="module")
def held_out():
    return world.make_dataset(40, seed=HELD_OUT_SEED)


def test_shipped_classifier_config_matches_world():
    record = json.loads((se.shipped_classifier_path() / "config.json").read_text())
    assert record["classes"] == {a: list(se.CLASSES[a]) for a in se.ATTRIBUTES}
    assert se.load_classifier() is se.load_classifier()          # cached in-process


def test_classifier_on_clean_held_out_frames(held_out):
    rng = np.random.default_rng(0)
    clip, frame = rng.integers(0, 40, 200), rng.integers(0, 16, 200)
    probs = se.classify_frames(held_out["frames"][clip, frame])
    for a in se.ATTRIBUTES:
        assert probs[a].shape == (200, len(se.CLASSES[a]))
        np.testing.assert_allclose(probs[a].sum(axis=1), 1.0, atol=1e-5)
        accuracy = float((probs[a].argmax(axis=1) == held_out[a][clip]).mean())
        assert accuracy >= 0.95, (a, accuracy)


def test_classify_video_on_world_clips(held_out):
    right = 0
    for i in range(40):
        seen = se.classify_video(held_out["frames"][i])
        right += all(seen[a] == se.CLASSES[a][held_out[a][i]] for a in se.ATTRIBUTES)
    assert right >= 38


def test_classify_video_output_and_resizing(held_out):
    clip = held_out["frames"][0]
    seen = se.classify_video(clip)
    assert len(seen["frames"]["shape"]) == 16 and seen["frame_probabilities"]["colour"].shape == (16, 6)
    assert math.isclose(sum(seen["probabilities"]["background"].values()), 1.0, abs_tol=1e-5)
    big = np.repeat(np.repeat(clip, 2, axis=1), 2, axis=2)       # 64x64, INTER_AREA brings it back exactly
    bigger = se.classify_video(big)
    assert all(bigger[a] == seen[a] for a in se.ATTRIBUTES)


def test_attribute_fidelity_names_only_what_the_prompt_names():
    clip = world.render(world.ClipParams("star", "red", "white", "linear", 0.5, 0.5, dx=0.2), 32, 8)
    full = se.attribute_fidelity(clip.frames, "a red star on a white background")
    assert (full["colour_ok"], full["shape_ok"], full["background_ok"], full["score"]) == (True, True, True, 1.0)
    partial = se.attribute_fidelity(clip.frames, "a green star")
    assert partial["background_ok"] is None and partial["colour_ok"] is False and partial["shape_ok"] is True
    assert partial["score"] == 0.5
    assert se.attribute_fidelity(clip.frames, "something else")["score"] is None
