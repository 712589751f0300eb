"""End to end on a tiny random checkpoint: determinism, the guidance at work, shared inversion, analysis."""

import json

import numpy as np
import pytest

import motiontransfer
from motiontransfer.pipeline import _config, generate, get_model, fill_from_model, load_source
from motiontransfer.config import REFERENCE_NEGATIVE_PROMPT, TransferConfig
from motiontransfer.errors import ConfigError

from conftest import moving_square


@pytest.fixture()
def opts(tiny_model, tmp_path):
    return {"model": str(tiny_model), "steps": 6, "cache_dir": str(tmp_path / "cache"), "quiet": True}


@pytest.fixture()
def every_step(opts):
    """Every guided step optimised (the paper's recipe, --preset previous): tests that look at each step's
    optimisation. The default's reuse of a step's change is tests/test_cheap_guidance.py's."""
    return opts | {"reuse_every": 1}


def test_same_seed_same_frames_other_seed_other_frames(opts):
    video = moving_square()
    a = motiontransfer.transfer(video, "a green star", output_dir=False, seed=3, **opts)
    b = motiontransfer.transfer(video, "a green star", output_dir=False, seed=3, **opts)
    c = motiontransfer.transfer(video, "a green star", output_dir=False, seed=4, **opts)
    assert a.frames.shape == (4, 32, 32, 3) and a.frames.dtype == np.uint8
    assert np.array_equal(a.frames, b.frames)
    assert not np.array_equal(a.frames, c.frames)
    assert b.inversion_cached and a.seed == 3


def test_seed_is_drawn_and_recorded_when_not_given(opts, tmp_path):
    r = motiontransfer.transfer(moving_square(), "a green star", output_dir=tmp_path / "out", **opts)
    record = json.loads((tmp_path / "out" / "run.json").read_text())
    assert record["seed"] == r.seed and isinstance(r.seed, int)
    again = motiontransfer.transfer(moving_square(), "a green star", output_dir=False, seed=r.seed, **opts)
    assert np.array_equal(again.frames, r.frames)


def test_guidance_lowers_the_loss_on_average(every_step):
    r = motiontransfer.transfer(moving_square(), "a blue circle", output_dir=False, seed=0, iterations=8,
                                guidance_window=(0.0, 0.5), **every_step)
    steps = r.history.guided
    assert len(steps) == 3 and all(len(s.losses) == 8 for s in steps)
    before = np.mean([s.losses[0] for s in steps])
    after = np.mean([s.loss_after for s in steps])
    assert after < before
    # source features once per guided timestep, the target side once per iteration; the loss after is read
    # off the sampling step's own pass
    assert r.counts["unet_truncated_forward"] == 3 + 3 * 8 and r.counts["unet_backward"] == 24


def test_prompts_share_inversion_and_source_features(every_step):
    results = motiontransfer.transfer_many(moving_square(), ["a green star", "a blue circle"], output_dir=False,
                                           seed=0, **every_step)
    assert [r.prompt for r in results] == ["a green star", "a blue circle"]
    guided = len(results[0].history.guided)
    # the source side is computed once and counted in the first record
    assert results[0].counts["unet_truncated_forward"] == guided + guided * 10
    assert results[1].counts["unet_truncated_forward"] == guided * 10
    assert results[1].counts["unet_forward"] == 2 * 6 and "inversion" not in results[1].timings
    single = motiontransfer.transfer(moving_square(), "a blue circle", output_dir=False, seed=0, **every_step)
    assert np.array_equal(single.frames, results[1].frames)          # the single run reads the cache


def test_no_inversion_needed_for_unguided_random_init(opts, tiny_model):
    cfg = TransferConfig(model=str(tiny_model), steps=4, init="random", iterations=0, seed=1,
                         cache_dir=opts["cache_dir"])
    model = get_model(cfg)
    cfg = fill_from_model(cfg, model)
    r = generate(model, load_source(moving_square(), cfg, 8.0), ["a red star"], cfg, progress=False)[0]
    assert r.counts["unet_forward"] == 4 * 2 and r.counts["unet_truncated_forward"] == 0
    assert "inversion" not in r.timings


def test_reference_preset_runs_long_inversion_and_restart(opts):
    r = motiontransfer.transfer(moving_square(), "a green star", output_dir=False, seed=0, preset="reference",
                                iterations=1, **{**opts, "steps": 4})
    assert r.config.inversion_steps == 999 and r.config.restart
    assert r.config.lf_filter == "reference" and r.config.vae_encode == "sample" and r.config.quantize == "truncate"
    assert r.config.negative_prompt == REFERENCE_NEGATIVE_PROMPT       # the tiny model recommends ""
    assert r.history.restarts == 3 and r.history.unet_passes == 7
    assert r.counts["unet_forward"] >= 750          # inversion up to t = 751 with 999 steps


def test_truncation_puts_some_pixels_one_level_below_rounding_on_the_same_latent(opts):
    def frames(**options):            # no inversion, no guidance: the same final latent whatever the conversion
        return motiontransfer.transfer(moving_square(), "a green star", output_dir=False, seed=0, init="random",
                                       iterations=0, **opts, **options).frames.astype(np.int16)

    rounded, truncated = frames(), frames(quantize="truncate")
    assert np.array_equal(rounded, frames(quantize="round"))
    assert set(np.unique(rounded - truncated)) == {0, 1}


def test_negative_prompt_reference_preset_the_references_default_the_models(tiny_model):
    model = get_model(TransferConfig(model=str(tiny_model)))
    assert model.defaults.negative_prompt == ""

    def negative(preset, **options):
        cfg, _, explicit = _config(preset, None, {"model": str(tiny_model), **options})
        return fill_from_model(cfg, model, explicit).negative_prompt

    assert negative("reference") == REFERENCE_NEGATIVE_PROMPT
    assert negative("default") == negative(None) == ""
    assert negative("reference", negative_prompt="blurry") == "blurry"       # a flag still wins


def test_posterior_sample_inversion_is_cached_per_seed_and_apart_from_the_mean(opts):
    video = moving_square()

    def run(seed, vae_encode="sample"):
        return motiontransfer.transfer(video, "a green star", output_dir=False, seed=seed, vae_encode=vae_encode,
                                       iterations=1, **opts)

    a, again, other, mean = run(0), run(0), run(1), run(0, "mean")
    assert not a.inversion_cached and again.inversion_cached and np.array_equal(a.frames, again.frames)
    assert not other.inversion_cached and not mean.inversion_cached
    assert not np.array_equal(a.frames, mean.frames)
    assert run(0, "mean").inversion_cached


def test_inversion_cache_key_names_the_seed_only_for_a_posterior_sample():
    import torch

    from motiontransfer.pipeline import inversion_settings

    def settings(**changes):
        return inversion_settings(TransferConfig(inversion_steps=50, **changes), [1, 0], torch.float32)

    # the mean's key does not name the seed; a sample's holds it
    assert settings(seed=0) == settings(seed=1) == {"steps": 25, "inversion_steps": 50, "source_prompt": "",
                                                    "keep": [0, 1], "dtype": "torch.float32"}
    assert settings(seed=0, vae_encode="sample") == settings(seed=0) | {"vae_encode": "sample", "seed": 0}
    assert settings(seed=0, vae_encode="sample") != settings(seed=1, vae_encode="sample")


def test_invert_refuses_the_8_bit_conversion_it_never_makes(opts):
    with pytest.raises(ConfigError, match="quantize would do nothing"):
        motiontransfer.invert(moving_square(), quantize="truncate", fps=8.0, **opts)


def test_invert_with_a_posterior_sample_needs_a_seed(opts):
    with pytest.raises(ConfigError, match="pass --seed"):
        motiontransfer.invert(moving_square(), vae_encode="sample", fps=8.0, **opts)


@pytest.mark.parametrize("target", ["features", "smm"])
def test_analyze_writes_one_video_per_seed(opts, tmp_path, target):
    results = motiontransfer.analyze(moving_square(), target=target, seeds=2, output_dir=tmp_path / target,
                                     **opts)
    assert [r.seed for r in results] == [0, 1]
    for seed in (0, 1):
        assert (tmp_path / target / f"seed-{seed}" / "result.mp4").exists()
        assert json.loads((tmp_path / target / f"seed-{seed}" / "run.json").read_text())["analysis"] == target
    assert not np.array_equal(results[0].frames, results[1].frames)


def test_sdedit_baseline_starts_part_way_and_needs_no_inversion(opts):
    r = motiontransfer.transfer(moving_square(), "a green star", output_dir=False, seed=0, init="sdedit",
                                sdedit_strength=0.6, iterations=0, **opts)
    assert r.history.unet_passes == 4                       # of 831, 665, 499, 333, 167, 1: those <= 600
    assert "inversion" not in r.timings and r.counts["unet_truncated_forward"] == 0


def test_cpu_offload_and_vae_slicing_leave_the_result_unchanged(opts):
    video = moving_square()
    plain = motiontransfer.transfer(video, "a green star", output_dir=False, seed=5, **opts)
    lean = motiontransfer.transfer(video, "a green star", output_dir=False, seed=5, cpu_offload=True,
                                   vae_slicing=True, **opts)
    assert np.abs(plain.frames.astype(int) - lean.frames).max() <= 1
    assert lean.config.cpu_offload and get_model(lean.config).cpu_offload


@pytest.mark.parametrize("mode", ["checkpoint", "offload"])
def test_activation_options_give_the_same_transfer(every_step, mode):
    video = moving_square()
    plain = motiontransfer.transfer(video, "a green star", output_dir=False, seed=2, activations="none", **every_step)
    other = motiontransfer.transfer(video, "a green star", output_dir=False, seed=2, activations=mode, **every_step)
    before = [s.losses for s in plain.history.guided]
    after = [s.losses for s in other.history.guided]
    np.testing.assert_allclose(np.array(after), np.array(before), rtol=1e-4)
    assert np.abs(plain.frames.astype(int) - other.frames).max() <= 1


def test_model_recommendations_apply_unless_set_explicitly(tiny_model, tmp_path, opts):
    import shutil

    model = tmp_path / "model"
    shutil.copytree(tiny_model, model)
    extra = json.loads((model / "motiontransfer.json").read_text())
    (model / "motiontransfer.json").write_text(json.dumps(extra | {"method_defaults": {"lf_factor": 2}}))
    o = {**opts, "model": str(model)}
    assert motiontransfer.transfer(moving_square(), "a red star", output_dir=False, seed=0, **o).config.lf_factor == 2
    r = motiontransfer.transfer(moving_square(), "a red star", output_dir=False, seed=0, lf_factor=4, **o)
    assert r.config.lf_factor == 4                                   # a flag equal to the default still wins
    r = motiontransfer.transfer(moving_square(), "a red star", output_dir=False, seed=0, preset="reference",
                                **{**o, "steps": 2, "iterations": 1})
    assert r.config.lf_factor == 4                                   # the reference preset stays exact


def test_one_result_per_function():
    with pytest.raises(TypeError, match="transfer_many"):
        motiontransfer.transfer(moving_square(), ["a green star", "a blue circle"], output_dir=False)
    with pytest.raises(TypeError, match="use transfer"):
        motiontransfer.transfer_many(moving_square(), "a green star", output_dir=False)


def test_region_is_cut_out_before_the_fit_and_the_fit_is_recorded(opts, caplog):
    big = np.zeros((4, 90, 120, 3), np.uint8)
    big[:, 20:52, 40:72] = moving_square()                        # the square's 32x32 world inside a larger frame
    cfg = fill_from_model(TransferConfig(model=opts["model"], region=(40, 20, 32, 32)), get_model(
        TransferConfig(model=opts["model"])), set())
    with caplog.at_level("INFO", logger="motiontransfer.pipeline"):
        source = load_source(big, cfg, fps=8.0)
    np.testing.assert_array_equal(source.frames, moving_square())      # same size: no resampling
    assert source.fit == "region 32x32 at (40, 20) of 120x90; resized to 32x32 (1x)"
    assert source.fit in caplog.text
    r = motiontransfer.transfer(big, "a green star", output_dir=False, seed=0, region=(40, 20, 32, 32), **opts)
    assert r.record["fit"] == source.fit
    whole = load_source(big, cfg.replace(region=None), fps=8.0)
    assert whole.fit.startswith("source 120x90; centre crop keeps columns 15-104")


def test_invert_returns_where_the_cache_is(opts):
    first = motiontransfer.invert(moving_square(), fps=8.0, **opts)
    again = motiontransfer.invert(moving_square(), fps=8.0, **opts)
    assert isinstance(first, motiontransfer.InversionResult) and first.cache.is_file()
    assert not first.cached and first.unet_forward > 0
    assert again.cached and again.cache == first.cache and again.unet_forward == 0


def test_progress_events_count_inversion_and_sampling_steps_with_the_guidance_loss(every_step):
    events = []
    results = motiontransfer.transfer_many(moving_square(), ["a green star", "a blue circle"], output_dir=False,
                                           seed=0, on_progress=events.append, **every_step)
    inversion = [e for e in events if e.phase == "inversion"]
    assert [e.step for e in inversion] == list(range(1, len(inversion) + 1)) and inversion[-1].total == len(inversion)
    for k, r in enumerate(results):
        sampling = [e for e in events if e.phase == "sampling" and e.prompt_index == k]
        assert [e.step for e in sampling] == list(range(1, 7)) and all(e.total == 6 and e.prompt_count == 2
                                                                        for e in sampling)
        losses = [e.loss for e in sampling if e.loss is not None]
        assert losses == [s.loss_after for s in r.history.guided]
    # a cache hit has no inversion steps to report
    events.clear()
    motiontransfer.transfer(moving_square(), "a green star", output_dir=False, seed=0, on_progress=events.append,
                            **every_step)
    assert events and not [e for e in events if e.phase == "inversion"]


def test_a_tampered_cache_entry_is_recomputed_and_a_failing_cache_write_loses_nothing(opts, caplog, monkeypatch):
    import torch
    from safetensors.torch import save_file

    from motiontransfer.errors import OutputError
    from motiontransfer.inversion import InversionCache

    video = moving_square()
    fresh = motiontransfer.transfer(video, "a green star", output_dir=False, seed=1, **opts)
    [entry] = InversionCache(opts["cache_dir"]).entries()
    # a foreign entry of another size under the same name: used silently before, now recomputed
    save_file({t: torch.zeros(1, 4, 4, 4, 4) for t in ("981", "961")}, entry.path)
    with caplog.at_level("WARNING"):
        again = motiontransfer.transfer(video, "a green star", output_dir=False, seed=1, **opts)
    assert "recomputing" in caplog.text and not again.inversion_cached
    assert np.array_equal(again.frames, fresh.frames)

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("motiontransfer.inversion.save_file", full_disk)
    entry.path.unlink()
    caplog.clear()
    with caplog.at_level("WARNING"):
        r = motiontransfer.transfer(video, "a blue circle", output_dir=False, seed=1, **opts)
    assert r.frames.shape == fresh.frames.shape and "could not write the inversion cache" in caplog.text
    with pytest.raises(OutputError, match="could not write the inversion cache"):
        motiontransfer.invert(video, **opts)


def test_layers_default_to_the_models_and_their_weights_are_checked_against_them(opts):
    from motiontransfer.config import DEFAULT_LAYERS

    result = motiontransfer.transfer(moving_square(), "a green star", output_dir=False, seed=0, fps=8.0, **opts)
    assert tuple(result.config.layers) == DEFAULT_LAYERS                 # the UNet3D family's, the reference's
    with pytest.raises(ConfigError, match="layer_weights has 2 entries for 3 layers"):
        motiontransfer.transfer(moving_square(), "a green star", output_dir=False, seed=0, fps=8.0,
                                layer_weights=(1.0, 2.0), **opts)


def test_nan_weights_are_a_clear_error_not_a_black_video(tiny_model, tmp_path):
    import shutil

    import torch
    from safetensors.torch import load_file, save_file

    from motiontransfer.errors import ModelError

    damaged = tmp_path / "damaged"
    shutil.copytree(tiny_model, damaged)
    weights = next((damaged / "unet").glob("*.safetensors"))
    tensors = load_file(weights)
    tensors["conv_out.weight"] = torch.full_like(tensors["conv_out.weight"], float("nan"))
    save_file(tensors, weights)
    with pytest.raises(ModelError, match="NaN or infinite values.*damaged weights"):
        motiontransfer.transfer(moving_square(), "a green star", model=str(damaged), output_dir=tmp_path / "out",
                                steps=3, seed=0, fps=8.0, quiet=True, cache_dir=str(tmp_path / "c"))
    assert not (tmp_path / "out").exists()
    with pytest.raises(ModelError, match="would be a black video.*damaged weights"):      # no inversion
        motiontransfer.text_to_video("a green star", model=str(damaged), steps=3, seed=0)


def test_a_device_that_is_not_there_is_one_line(opts):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(ConfigError, match="--device cuda: this machine has no CUDA device"):
        motiontransfer.transfer(moving_square(), "a green star", output_dir=False, seed=0, fps=8.0, device="cuda",
                                **opts)


def test_run_records_hold_no_bare_nan():
    from motiontransfer.pipeline import finite_or_none

    record = {"loss": float("nan"), "losses": [1.0, float("inf")], "nested": {"x": -float("inf"), "y": 2}}
    assert json.loads(json.dumps(finite_or_none(record), allow_nan=False)) == \
        {"loss": None, "losses": [1.0, None], "nested": {"x": None, "y": 2}}


@pytest.mark.parametrize("fps", [float("nan"), 0.0, -8.0, float("inf")])
def test_fps_must_be_a_positive_finite_rate(opts, fps):
    with pytest.raises(ConfigError, match="--fps must be a number"):
        motiontransfer.transfer(moving_square(), "a green star", output_dir=False, seed=0, fps=fps, **opts)


@pytest.mark.parametrize("prompts, message", [(["x" * 3000], "at most 2000 characters"),
                                              (["a\x00b"], "without NUL"), (["a"] * 101, "at most 100")])
def test_prompts_are_bounded(opts, prompts, message):
    with pytest.raises(ConfigError, match=message):
        motiontransfer.transfer_many(moving_square(), prompts, output_dir=False, seed=0, fps=8.0, **opts)
    with pytest.raises(ConfigError, match="--source-prompt must be text of at most"):
        motiontransfer.transfer(moving_square(), "a star", output_dir=False, source_prompt="y" * 3000, fps=8.0,
                                **opts)
