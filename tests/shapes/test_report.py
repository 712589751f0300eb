"""Tests of the shapes evaluation: the shipped attribute classifier, segmentation and tracking against the
world's ground truth, coherence, trajectory agreement, and the report's plumbing on a tiny random model."""

import json
import math

import numpy as np
import pytest

from motiontransfer.shapes import report as se
from motiontransfer.shapes import world

HELD_OUT_SEED = 424_242            # not a classifier training seed (shapes_eval.CLASSIFIER_TRAIN_SEED + s)


@pytest.fixture(scope="module")
def held_out():
    return world.make_dataset(40, seed=HELD_OUT_SEED)


def _linear_track(frames: int = 8) -> np.ndarray:
    t = np.arange(frames, dtype=np.float64)
    return np.stack([5 + 1.5 * t, 20 - 0.7 * t], axis=1)


# ------------------------------------------------------------------------------------------------ classifier

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


# ------------------------------------------------------------------------------------- segmentation, motion

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


# ------------------------------------------------------------------------------------------------- report

def test_evaluate_model_on_a_tiny_random_model(tiny_model, tmp_path):
    out = tmp_path / "report.json"
    report = se.evaluate_model(str(tiny_model), n_prompts=2, seed=0, steps=2, out=out, pairs=1, real_clips=4,
                               vae_clips=1, progress=False)
    assert set(report) == {"settings", "text_to_video", "vae", "transfer"}
    assert {"colour_ok", "shape_ok", "background_ok", "all_ok", "one_object", "moves", "max_jump_median",
            "real_max_jump_median", "max_jump_ratio", "videos"} <= set(report["text_to_video"])
    assert {"psnr", "shape_acc_original", "shape_acc_roundtrip"} <= set(report["vae"])
    for side in ("transfer", "baseline", "source"):
        assert {"velocity_cosine", "centre_error", "target_colour", "target_shape",
                "seconds_per_video"} <= set(report["transfer"][side])
    assert report["transfer"]["source"]["velocity_cosine"] > 0.9           # the tracker on the source itself
    assert json.loads(out.read_text())["settings"]["n_prompts"] == 2
    assert "motion transfer" in se.format_report(report)
