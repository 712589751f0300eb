"""Memory counts: the meta-device counts equal what a real CPU run holds, for either family; the options lower the
estimates and the meta model is left as found."""

import contextlib
import dataclasses

import pytest
import torch
from diffusers import UNet3DConditionModel
from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0
from torch.nn.attention import SDPBackend, sdpa_kernel

from motiontransfer.config import DEFAULT_LAYERS
from motiontransfer.features import FeatureHooks
from motiontransfer.losses import motion_loss
from motiontransfer.activations import checkpoint_blocks
from motiontransfer.backbones.unet3d import unet_checkpoint_units
from motiontransfer.errors import ConfigError
from motiontransfer.tools.memory import (CHECK_CASES, PHASES, PLAIN_PHASES, LiveBytes, SavedTensorCounter,
                                         cpu_allocator_peak, cpu_check, estimate_guided_iteration, estimate_run,
                                         fused_attention, meta_model)
from motiontransfer.tools.meta import TINY_WAN, frozen, meta_backbone

# The tiny UNet3D of conftest.build_tiny_model: ZeroScope's block types, (8, 16, 16) channels.
TINY_UNET = dict(sample_size=8, block_out_channels=(8, 16, 16), layers_per_block=1,
                 down_block_types=("CrossAttnDownBlock3D", "CrossAttnDownBlock3D", "DownBlock3D"),
                 up_block_types=("UpBlock3D", "CrossAttnUpBlock3D", "CrossAttnUpBlock3D"),
                 norm_num_groups=4, cross_attention_dim=16, attention_head_dim=4)
TINY_VAE = dict(block_out_channels=(8, 8, 8), down_block_types=("DownEncoderBlock2D",) * 3,
                up_block_types=("UpDecoderBlock2D",) * 3, latent_channels=4, norm_num_groups=4, layers_per_block=1,
                sample_size=32)
TINY_TEXT = dict(vocab_size=16, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                 max_position_embeddings=77)
FRAMES, SIZE = 4, 16          # latent (1, 4, 4, 16, 16)


def _unet(device: str, attention: str) -> UNet3DConditionModel:
    with torch.device(device):
        torch.manual_seed(0)
        unet = UNet3DConditionModel(**TINY_UNET).eval().requires_grad_(False)
    if attention == "plain":
        unet.set_attn_processor(AttnProcessor())
    return unet


def _inputs(device: str):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(1, 4, FRAMES, SIZE, SIZE, generator=g).to(device)
    cond = torch.randn(1, 8, 16, generator=g).to(device)
    src = {n: torch.randn(1, FRAMES, 16, generator=g).to(device) for n in DEFAULT_LAYERS}
    return x, cond, src


def _step(unet, x, cond, src, *, truncate=True, option=None, counter=None):
    """One guided iteration's forward and backward, as the pipeline runs it; returns the latent's gradient."""
    x = x.detach().clone().requires_grad_(True)
    with FeatureHooks(unet, DEFAULT_LAYERS, stop_early=truncate) as hooks, option or contextlib.nullcontext():
        with counter or contextlib.nullcontext():
            feats = {n: f.unflatten(0, (-1, FRAMES)).float()
                     for n, f in hooks.run(unet, x, 501, encoder_hidden_states=cond).items()}
            loss = motion_loss("pairwise_cosine", src, feats)
        del feats
        loss.backward()
    return x.grad


def _attention_context(device: str, attention: str):
    """The same attention kernel on both devices: SDPA's math path, or a fused kernel (CPU flash; its stand-in
    on meta)."""
    if attention == "sdpa-fused":
        return fused_attention() if device == "meta" else sdpa_kernel([SDPBackend.FLASH_ATTENTION])
    return sdpa_kernel([SDPBackend.MATH]) if device == "cpu" else contextlib.nullcontext()


# ------------------------------------------------------------------------------------- counts vs real runs

@pytest.mark.parametrize("attention", ["sdpa-math", "plain", "sdpa-fused"])
@pytest.mark.parametrize("truncate", [True, False])
def test_saved_bytes_on_meta_equal_a_real_cpu_run(attention, truncate):
    counts = []
    for device in ("cpu", "meta"):
        unet = _unet(device, attention)
        counter = SavedTensorCounter(exclude=unet.parameters())
        with _attention_context(device, attention):
            _step(unet, *_inputs(device), truncate=truncate, counter=counter)
        counts.append((counter.bytes, counter.tensors))
    assert counts[0][0] > 0
    assert counts[0] == counts[1]


@pytest.mark.parametrize("mode", ["none", "checkpoint"])
def test_peak_on_meta_matches_the_cpu_allocator(mode):
    peaks = []
    for device in ("cpu", "meta"):
        unet = _unet(device, "sdpa-fused")
        x, cond, src = _inputs(device)
        recompute = fused_attention if device == "meta" else contextlib.nullcontext
        option = checkpoint_blocks(unet, unet_checkpoint_units(unet), recompute_context=recompute) \
            if mode == "checkpoint" else None
        with _attention_context(device, "sdpa-fused"):
            if device == "cpu":
                try:
                    peaks.append(cpu_allocator_peak(lambda: _step(unet, x, cond, src, option=option)))
                except RuntimeError as e:
                    pytest.skip(str(e))
            else:
                tracker = LiveBytes("meta")
                with tracker:
                    _step(unet, x, cond, src, option=option)
                peaks.append(tracker.peak)
    real, counted = peaks
    assert counted <= real <= 1.02 * counted         # kernels' own scratch memory is all the CPU run may add


# ------------------------------------------------------------------------------------------- estimates

def _hooks(module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in module.modules())


def _estimate(**kw):
    return estimate_guided_iteration(TINY_UNET, 4, 64, 64, torch.float16, text_tokens=8, **kw)


def test_truncation_saves_strictly_less_than_the_full_forward():
    truncated, full = _estimate(truncate=True), _estimate(truncate=False)
    assert 0 < truncated["saved"] < full["saved"]
    assert truncated["peak"] < full["peak"]
    assert truncated["weights"] == full["weights"] == 2 * sum(
        p.numel() for p in meta_model(TINY_UNET, None, None).unet.parameters())


def test_options_lower_the_estimate_and_the_model_is_restored():
    none = _estimate()
    assert _estimate(activations="checkpoint")["peak"] < none["peak"]
    offload = _estimate(activations="offload")
    assert offload["held"] < none["held"] and offload["host"] > 0
    assert _estimate(attention="plain")["saved"] > none["saved"]
    unet = meta_model(TINY_UNET, None, None).unet
    assert all(isinstance(p, AttnProcessor2_0) for p in unet.attn_processors.values())
    assert _hooks(unet) == 0


def test_run_estimate_takes_the_largest_phase():
    kw = dict(unet_config=TINY_UNET, vae_config=TINY_VAE, text_config=TINY_TEXT, frames=4, height=32, width=32)
    run = estimate_run(**kw)
    assert set(run["phases"]) == {"text", "encode", "inversion", "source", "guidance", "sampling", "decode"}
    assert run["peak"] == max(p["total"] for p in run["phases"].values())
    sliced = estimate_run(**kw, vae_slicing=True)
    assert sliced["phases"]["decode"]["activations"] < run["phases"]["decode"]["activations"]
    offload = estimate_run(**kw, cpu_offload=True)
    assert offload["peak"] < run["peak"]
    assert offload["phases"]["decode"]["weights"] < run["phases"]["decode"]["weights"]


# ------------------------------------------------------------------------------------------- Wan family

@pytest.mark.parametrize("attention", ["sdpa-fused", "sdpa-math"])
@pytest.mark.parametrize("case", CHECK_CASES)
def test_wan_counts_on_meta_equal_a_real_cpu_run(case, attention):
    try:
        r = cpu_check(TINY_WAN, 17, 64, 64, case, attention=attention)
    except RuntimeError as e:                       # a torch whose profiler gives no allocation events
        pytest.skip(str(e))
    assert r["saved_cpu"] == r["saved_meta"] and (r["saved_cpu"] is None) == (case != "guided step")
    assert r["peak_cpu_ops"] == r["peak_meta"] > 0      # the same ops and lifetimes on both devices
    assert r["peak_meta"] <= r["peak_cpu"]               # the CPU kernels' own scratch comes on top


def test_fused_attention_takes_q_k_v_by_name_as_diffusers_dispatch_passes_them():
    q, k, v = (torch.empty(1, 2, 6, 4, device="meta", requires_grad=True) for _ in range(3))
    with fused_attention():
        out = torch.nn.functional.scaled_dot_product_attention(query=q, key=k, value=v, attn_mask=None, dropout_p=0.0,
                                                               is_causal=False, scale=None, enable_gqa=False)
        masked = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=torch.ones(6, 6, device="meta",
                                                                                                dtype=torch.bool))
    assert out.shape == (1, 2, 6, 4) and type(out.grad_fn).__name__ == "_FusedAttentionBackward"
    assert type(masked.grad_fn).__name__ != "_FusedAttentionBackward"      # a mask takes the usual path


def test_wan_run_estimate_adds_up_and_the_options_lower_it():
    wide = dataclasses.replace(TINY_WAN, denoiser=frozen(dict(TINY_WAN.denoiser) | {"rope_max_seq_len": 64}))
    kw = dict(model=wide, frames=9, height=288, width=288)      # over the VAE's 256-pixel tiles
    run = estimate_run(**kw)
    assert set(run["phases"]) == set(PHASES)
    for p in run["phases"].values():
        assert p["total"] == p["weights"] + p["state"] + p["activations"]
    assert run["peak"] == max(p["total"] for p in run["phases"].values())
    plain = estimate_run(**kw, plain=True)
    assert set(plain["phases"]) == set(PLAIN_PHASES) and plain["peak"] <= run["peak"]
    assert plain["phases"]["sampling"]["activations"] == run["phases"]["sampling"]["activations"]
    checkpointed = estimate_run(**kw, activations="checkpoint")["phases"]["guidance"]
    assert checkpointed["held"] < run["phases"]["guidance"]["held"]
    assert checkpointed["activations"] < run["phases"]["guidance"]["activations"]
    tiled = estimate_run(**kw, vae_slicing=True)["phases"]
    assert tiled["decode"]["activations"] < run["phases"]["decode"]["activations"]
    offload = estimate_run(**kw, cpu_offload=True)["phases"]
    assert offload["guidance"]["weights"] < run["phases"]["guidance"]["weights"]
    model = meta_backbone(wide)
    assert _hooks(model.transformer) == 0 and not model.vae_slicing


def test_wan_guided_iteration_counts_the_hooked_blocks_only():
    first, last = ({"layers": (f"blocks.{i}",)} for i in (0, 1))
    kw = dict(model=TINY_WAN, frames=9, height=64, width=64)
    assert estimate_run(**kw, **first)["phases"]["guidance"]["held"] < \
        estimate_run(**kw, **last)["phases"]["guidance"]["held"]
    with pytest.raises(ConfigError, match="Wan transformer"):
        estimate_run(**kw, attention="plain")
