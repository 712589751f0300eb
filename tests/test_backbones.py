"""The backbone seam: both families behind one protocol, on tiny random checkpoints built with the real classes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import motiontransfer
from motiontransfer.activations import activation_options
from motiontransfer.backbones import family_of
from motiontransfer.backbones.base import to_uint8
from motiontransfer.errors import ConfigError, ModelError
from motiontransfer.features import FeatureHooks
from motiontransfer.losses import motion_loss, reduce_source
from motiontransfer.models import load_model

from conftest import build_tiny_wan_model, moving_square


@pytest.fixture(scope="module")
def wan(tiny_wan):
    return load_model(str(tiny_wan), device="cpu")


@pytest.fixture(scope="module")
def unet(tiny_model):
    return load_model(str(tiny_model), device="cpu")


def test_the_family_comes_from_model_index(tiny_wan, tiny_model, tmp_path):
    assert family_of(tiny_wan) == "wan" and family_of(tiny_model) == "unet3d"
    other = tmp_path / "i2v"
    shutil.copytree(tiny_wan, other)
    index = json.loads((other / "model_index.json").read_text())
    (other / "model_index.json").write_text(json.dumps(index | {"_class_name": "WanImageToVideoPipeline"}))
    with pytest.raises(ModelError, match="WanImageToVideoPipeline.*supported pipelines"):
        load_model(str(other), device="cpu")


@pytest.mark.parametrize("change, message", [
    ({"boundary_ratio": 0.875}, "two-expert"), ({"expand_timesteps": True}, "per-token timesteps")])
def test_wan22_folders_are_refused_in_one_line(tiny_wan, tmp_path, change, message):
    other = tmp_path / "wan22"
    shutil.copytree(tiny_wan, other)
    index = json.loads((other / "model_index.json").read_text())
    (other / "model_index.json").write_text(json.dumps(index | change))
    with pytest.raises(ModelError, match=message):
        load_model(str(other), device="cpu")


def test_the_protocol_gives_one_layout_for_both_families(wan, unet):
    for model, frames, latent_frames in ((wan, 9, 5), (unet, 4, 4)):
        video = moving_square(frames, 32)
        x0 = model.encode_frames(video)
        assert tuple(x0.shape) == model.latent_shape(frames, 32, 32)
        assert x0.shape[2] == latent_frames
        assert model.decode_latents(x0).shape == (frames, 32, 32, 3)
        cond = model.encode_prompts(["a red star"])
        t = model.schedule(5).timesteps[0]
        with FeatureHooks(model.denoiser, model.default_layers) as hooks:
            feats = model.features(hooks, x0, t, cond)
        for f in feats.values():                                  # (B, F', D, h', w')
            assert f.dim() == 5 and f.shape[:2] == (1, latent_frames)
        assert model.predict(x0, t, cond).shape == x0.shape


def test_8_bit_conversion_rounds_by_default_and_truncates_as_the_reference_does():
    # pixels whose levels (x + 1) x 127.5 are 0, 10.2, 10.7, 127.5, 254.6, 255, then two past the ends
    levels = torch.tensor([0.0, 10.2, 10.7, 127.5, 254.6, 255.0])
    x = torch.cat([levels / 127.5 - 1, torch.tensor([-1.5, 1.5])])
    assert to_uint8(x).tolist() == to_uint8(x, "round").tolist() == [0, 10, 11, 128, 255, 255, 0, 255]
    assert to_uint8(x, "truncate").tolist() == [0, 10, 10, 127, 254, 255, 0, 255]
    assert to_uint8(x.reshape(2, 4), "truncate").dtype == torch.uint8
    with pytest.raises(ValueError, match="round, truncate"):
        to_uint8(x, "floor")


def test_truncation_is_the_references_arithmetic_bit_for_bit():
    """diffusers 0.20's tensor2vid, which the reference calls: x * 0.5 + 0.5, clamped to [0, 1], then in numpy
    times 255 and cast to uint8; on fp16 decoder output too (the reference decodes under fp16 autocast)."""
    x = torch.randn(200_000, generator=torch.Generator().manual_seed(0)) * 0.7
    for pixels in (x, x.half()):
        video = pixels.float().clone().mul_(torch.tensor(0.5)).add_(torch.tensor(0.5)).clamp_(0, 1)
        reference = (video.numpy() * 255).astype("uint8")
        ours = to_uint8(pixels, "truncate").numpy()
        assert np.array_equal(ours, reference)
        rounded = to_uint8(pixels).numpy().astype(np.int16)
        assert set(np.unique(rounded - ours)) == {0, 1}        # truncation: the level of rounding, or one below


def test_wan_latents_follow_the_vae_config(wan, tiny_wan, tmp_path):
    assert wan.factors == (2, 4) and wan.latent_shape(17, 32, 64) == (1, 4, 9, 8, 16)
    flat = load_model(str(build_tiny_wan_model(tmp_path / "flat", temporal_downsample=False)), device="cpu")
    assert flat.factors == (1, 4) and flat.latent_shape(9, 32, 32) == (1, 4, 9, 8, 8)


def test_wan_prompt_embeddings_are_zero_past_the_prompt(wan):
    emb = wan.encode_prompts(["a red star", "a blue circle moving"])
    assert emb.shape[:2] == (2, 8)
    assert emb[0, 4:].abs().sum() == 0 and emb[0, :4].abs().sum() > 0     # 3 words and the end token
    assert emb[1, 5:].abs().sum() == 0 and emb[1, 4].abs().sum() > 0


def test_wan_size_errors_name_the_nearest_valid_values(wan):
    wan.check_size(9, 32, 32)
    with pytest.raises(ConfigError, match=r"--frames 8 is not 4k \+ 1 \(nearest: 5 or 9\)"):
        wan.check_size(8, 32, 32)
    with pytest.raises(ConfigError, match=r"--width 36 is not a multiple of 8 \(nearest: 32 or 40\)"):
        wan.check_size(9, 32, 36)
    with pytest.raises(ConfigError, match="4k"):
        motiontransfer.transfer(moving_square(9, 32), "a red star", model=str(wan.path), frames=8, fps=16,
                                output_dir=False, quiet=True)


def test_truncated_features_equal_full_forward_features(wan):
    x = torch.randn(wan.latent_shape(9, 32, 32), generator=torch.Generator().manual_seed(0))
    cond = wan.encode_prompts(["a red star"])
    t = wan.schedule(5).timesteps[1]
    with FeatureHooks(wan.denoiser, ["blocks.0"], stop_early=True) as hooks:
        truncated = wan.features(hooks, x, t, cond)
    with FeatureHooks(wan.denoiser, ["blocks.0"], stop_early=False) as hooks:
        _, full = wan.predict_observed(hooks, x, t, cond)
    torch.testing.assert_close(truncated["blocks.0"], full["blocks.0"], rtol=0, atol=0)


def test_checkpointed_gradients_equal_plain_ones(wan):
    x = torch.randn(wan.latent_shape(9, 32, 32), generator=torch.Generator().manual_seed(1))
    cond = wan.encode_prompts(["a red star"])
    t = wan.schedule(5).timesteps[0]
    layers = ["blocks.1"]
    with FeatureHooks(wan.denoiser, layers) as hooks:
        src = reduce_source("pairwise_cosine", wan.features(hooks, x.flip(2), t, cond))

        def grad(mode):
            latent = x.clone().requires_grad_(True)
            names = wan.checkpoint_units() if mode == "checkpoint" else None
            with activation_options(wan.denoiser, mode, names=names), torch.enable_grad():
                motion_loss("pairwise_cosine", src, wan.features(hooks, latent, t, cond)).backward()
            return latent.grad

        plain = grad("none")
        assert plain.abs().sum() > 0
        torch.testing.assert_close(grad("checkpoint"), plain, rtol=0, atol=1e-6)


def test_wan_transfer_is_deterministic_and_the_cache_changes_nothing(wan, tmp_path):
    video = moving_square(9, 32)
    opts = dict(model=str(wan.path), output_dir=False, quiet=True, fps=16, seed=3, steps=6, cache_dir=str(tmp_path))
    first = motiontransfer.transfer(video, "a green star", **opts)
    again = motiontransfer.transfer(video, "a green star", **opts)                 # the inversion from the cache
    plain = motiontransfer.transfer(video, "a green star", **opts | {"use_cache": False})
    assert not first.inversion_cached and again.inversion_cached
    assert np.array_equal(first.frames, again.frames) and np.array_equal(first.frames, plain.frames)
    other = motiontransfer.transfer(video, "a green star", **opts | {"seed": 4})
    assert not np.array_equal(first.frames, other.frames)
    record = first.record
    assert record["config"]["guidance_scale"] == 5.0 and record["config"]["layers"] == ["blocks.1"]
    assert record["config"]["negative_prompt"] == "" and first.fps == 16 and record["model"]["family"] == "wan"
    assert [g["step"] for g in record["guidance"]] == [0, 1]


def test_every_init_runs_on_wan(wan, tmp_path):
    video = moving_square(9, 32)
    opts = dict(model=str(wan.path), output_dir=False, quiet=True, fps=16, seed=0, steps=4, cache_dir=str(tmp_path))
    for init in ("lf", "inverted", "random", "sdedit"):
        result = motiontransfer.transfer(video, "a green star", init=init, **opts)
        assert result.frames.shape == (9, 32, 32, 3)
    restarted = motiontransfer.transfer(video, "a green star", restart=True, iterations=0, **opts)
    assert restarted.history.restarts == 3
    t2v = motiontransfer.text_to_video("a red circle", model=str(wan.path), seed=0, steps=4)
    assert t2v.frames.shape == (9, 32, 32, 3)


def test_the_reference_preset_is_refused_on_wan(wan):
    with pytest.raises(ConfigError, match="preset reference.*wan model"):
        motiontransfer.transfer(moving_square(9, 32), "a green star", model=str(wan.path), preset="reference",
                                output_dir=False, quiet=True, fps=16)


def test_flow_inversion_then_sampling_reconstructs_with_a_velocity_that_ignores_x():
    from motiontransfer.inversion import invert_latent
    from motiontransfer.sampling import guided_sample
    from motiontransfer.schedules import FlowSchedule

    config = {"_class_name": "UniPCMultistepScheduler", "prediction_type": "flow_prediction",
              "use_flow_sigmas": True, "flow_shift": 3.0, "num_train_timesteps": 1000}
    v = torch.randn(1, 4, 3, 4, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    x0 = torch.randn(1, 4, 3, 4, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    schedule = FlowSchedule(config, 10)
    for solver in ("euler", "midpoint"):
        kept = invert_latent(lambda x, t: v, x0, schedule, 20, [0, 3], solver=solver, progress=False)
        assert sorted(kept) == [0, 3]
        torch.testing.assert_close(kept[0], x0 + (schedule.sigmas[0] - 0.0) * v)
        back, _ = guided_sample(lambda x, t: v, kept[0], schedule, progress=False)
        torch.testing.assert_close(back, x0, rtol=0, atol=1e-10)


def test_a_batch_job_runs_on_a_wan_model(wan, tmp_path):
    import yaml

    from motiontransfer.batch import run_batch
    from motiontransfer.video import write_video

    write_video(tmp_path / "clip.mp4", moving_square(9, 32), 16.0)
    spec = {"options": {"model": str(wan.path), "cache_dir": str(tmp_path / "cache"), "seed": 0, "steps": 4},
            "jobs": [{"name": "clip", "video": "clip.mp4", "prompt": "a green star"}]}
    (tmp_path / "jobs.yaml").write_text(yaml.safe_dump(spec))
    records = run_batch(tmp_path / "jobs.yaml", tmp_path / "out", quiet=True)
    assert [r["status"] for r in records] == ["done"]
    record = json.loads(next((tmp_path / "out").rglob("run.json")).read_text())
    assert record["config"]["layers"] == ["blocks.1"] and record["config"]["frames"] == 9


def test_a_shorter_clip_uses_the_longest_count_the_model_takes_unless_frames_are_given(wan, tmp_path, caplog):
    from motiontransfer.video import write_video

    clip = tmp_path / "short.mp4"
    write_video(clip, moving_square(7, 32), 16.0)
    opts = dict(model=str(wan.path), output_dir=False, quiet=True, seed=0, steps=3, cache_dir=str(tmp_path / "c"))
    with caplog.at_level("INFO", logger="motiontransfer.pipeline"):
        result = motiontransfer.transfer(clip, "a green star", **opts)
    assert result.frames.shape[0] == 5 and result.config.frames == 5                 # 4k + 1 <= 7
    assert "the clip has 7 frames, fewer than the model's 9: using 5" in caplog.text
    with pytest.raises(Exception, match="7 frames; 9 are needed"):
        motiontransfer.transfer(clip, "a green star", frames=9, **opts)


def test_the_web_ui_runs_a_wan_model(wan, tmp_path):
    pytest.importorskip("gradio")
    from motiontransfer.ui import App
    from motiontransfer.video import write_video

    write_video(tmp_path / "clip.mp4", moving_square(9, 32), 16.0)
    app = App(str(wan.path), tmp_path / "ui", {"cache_dir": str(tmp_path / "cache")})
    shown = app.run(str(tmp_path / "clip.mp4"), "a green star", numbers={"seed": 1, "steps": 3})
    assert Path(shown[0].result_video).exists() and shown[0].record["config"]["layers"] == ["blocks.1"]
    assert shown[0].record["fps"] == 16.0
