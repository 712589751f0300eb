"""The quality report's plumbing on a tiny random model."""

import json

from motiontransfer.shapes import report as se


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
