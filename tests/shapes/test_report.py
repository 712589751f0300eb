"""The quality report's plumbing on a tiny random model."""

import json

import numpy as np
import pytest

from motiontransfer.errors import ConfigError
from motiontransfer.shapes import report as se
from motiontransfer.shapes import world


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


def test_world_light_is_read_from_the_models_training_record(tmp_path):
    assert se.world_light() == 0.0                                # the shipped model's world is unlit
    (tmp_path / "motiontransfer.json").write_text(json.dumps({"width": 64, "train_config": {"light": 0.4}}))
    assert se.world_light(str(tmp_path)) == 0.4
    (tmp_path / "motiontransfer.json").write_text(json.dumps({"width": 64}))
    assert se.world_light(str(tmp_path)) == 0.0
    lit, unlit = se.transfer_pairs(2, 0, 32, 4, light=0.4), se.transfer_pairs(2, 0, 32, 4)
    for (a, ta), (b, tb) in zip(lit, unlit):
        assert ta == tb
        np.testing.assert_array_equal(a.frames, world.apply_light(b.frames, 0.4))


def test_bad_report_sizes_are_named_in_a_clear_error():
    with pytest.raises(ConfigError, match=r"n_prompts 0 \(at least 1\), real_clips 0 \(at least 1\)"):
        se.evaluate_model(None, n_prompts=0, real_clips=0, progress=False)
