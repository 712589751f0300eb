"""Memory: the meta-device counts equal what a real CPU run holds; checkpointing and offload change memory, not
gradients; the model is left as found."""

import contextlib

import pytest
import torch
from diffusers import UNet3DConditionModel
from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0
from torch.nn.attention import SDPBackend, sdpa_kernel

from motiontransfer.config import DEFAULT_LAYERS
from motiontransfer.errors import ConfigError
from motiontransfer.features import FeatureHooks
from motiontransfer.losses import motion_loss
from motiontransfer.tools.memory import (LiveBytes, SavedTensorCounter, activation_options, checkpoint_blocks,
                                   cpu_allocator_peak, estimate_guided_iteration, estimate_run, fused_attention,
                                   meta_model, offload_activations, unet_checkpoint_units)
from motiontransfer.models import load_model

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


# ------------------------------------------------------------------------------------- activation options

@pytest.fixture(scope="module")
def model(tiny_model):
    return load_model(str(tiny_model))


def _model_inputs(model, frames=4):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(1, 4, frames, 8, 8, generator=g)
    cond = model.encode_prompts(["a red star"])
    with FeatureHooks(model.unet, DEFAULT_LAYERS) as hooks, torch.no_grad():
        src = {n: f.mean(dim=(-2, -1)) for n, f in model.features(hooks, torch.randn(x.shape, generator=g), 701,
                                                                   cond).items()}
    return x, cond, src


def _model_grad(model, x, cond, src, option, truncate=True):
    x = x.clone().requires_grad_(True)
    with FeatureHooks(model.unet, DEFAULT_LAYERS, stop_early=truncate) as hooks, option:
        motion_loss("pairwise_cosine", src, model.features(hooks, x, 701, cond)).backward()
    return x.grad


class _CopyingOffload(offload_activations):
    """On a CPU-only machine every tensor is on the host already; this one copies them anyway."""

    def stays(self, tensor):
        return id(tensor.untyped_storage()) in self._resident


def _hooks(module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in module.modules())


@pytest.mark.parametrize("truncate", [True, False])
@pytest.mark.parametrize("option", ["checkpoint-layers", "checkpoint-blocks", "offload"])
def test_gradients_equal_those_without_the_option(model, option, truncate):
    x, cond, src = _model_inputs(model)
    plain = _model_grad(model, x, cond, src, contextlib.nullcontext(), truncate)
    unet = model.unet
    if option == "offload":
        ctx = _CopyingOffload(resident=[*unet.parameters(), *unet.buffers()])
    else:
        ctx = activation_options(unet, "checkpoint", units=option.split("-")[1])
    with_option = _model_grad(model, x, cond, src, ctx, truncate)
    assert plain.abs().sum() > 0
    if option == "offload":
        assert ctx.host_bytes > 0
        # a saved slice comes back compact (as with torch's save_on_cpu), which can take another kernel: rounding
        torch.testing.assert_close(with_option, plain, rtol=1e-5, atol=1e-6)
    else:
        assert torch.equal(plain, with_option)        # the same graph, the same saved values


def test_checkpoint_recomputes_each_call_once_and_skips_no_grad_passes(model):
    x, cond, src = _model_inputs(model)
    with activation_options(model.unet, "checkpoint", units="blocks") as ckpt:
        with torch.no_grad():
            model.predict(x, 701, cond)
        assert ckpt.calls == 0
        _model_grad(model, x, cond, src, contextlib.nullcontext())
    # truncated after up_blocks.1: down 0-2, mid, up 0-1
    assert ckpt.calls == ckpt.recomputations == 6


def test_model_left_as_found(model):
    unet = model.unet
    state = {k: v.clone() for k, v in unet.state_dict().items()}
    processors = {k: type(v) for k, v in unet.attn_processors.items()}
    x, cond, src = _model_inputs(model)
    for mode in ("checkpoint", "offload"):
        with pytest.raises(RuntimeError, match="boom"):
            with activation_options(unet, mode):
                with FeatureHooks(unet, DEFAULT_LAYERS) as hooks:
                    model.features(hooks, x.requires_grad_(True), 701, cond)
                raise RuntimeError("boom")
        assert _hooks(unet) == 0
        assert torch._C._autograd._top_saved_tensors_default_hooks(False) is None
    assert all(torch.equal(v, unet.state_dict()[k]) for k, v in state.items())
    assert {k: type(v) for k, v in unet.attn_processors.items()} == processors
    assert all("forward" not in vars(m) for m in unet.modules())


def test_an_error_inside_a_checkpointed_block_leaves_nothing_behind(model):
    x, cond, src = _model_inputs(model)
    plain = _model_grad(model, x, cond, src, contextlib.nullcontext())

    def boom(*args):
        raise RuntimeError("boom")

    handle = model.unet.get_submodule("down_blocks.1.attentions.0").register_forward_hook(boom)
    try:
        with pytest.raises(RuntimeError, match="boom"):
            _model_grad(model, x, cond, src, activation_options(model.unet, "checkpoint", units="blocks"))
    finally:
        handle.remove()
    assert torch._C._autograd._top_saved_tensors_default_hooks(False) is None
    assert _hooks(model.unet) == 0
    assert torch.equal(_model_grad(model, x, cond, src, contextlib.nullcontext()), plain)


def test_an_input_changed_in_place_is_an_error_not_a_wrong_gradient():
    net = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Tanh())
    a = torch.randn(2, 4, requires_grad=True)
    with checkpoint_blocks(net, ["0"]):
        h = a * 2
        y = net(h)
        h.add_(1)
        with pytest.raises(RuntimeError, match="modified in place"):
            y.sum().backward()


def test_bad_options_are_errors(model):
    with pytest.raises(ConfigError, match="activation mode"):
        with activation_options(model.unet, "recompute"):
            pass
    with pytest.raises(ConfigError, match="nest"):
        checkpoint_blocks(model.unet, ["up_blocks.1", "up_blocks.1.resnets.0"])
    with pytest.raises(ConfigError, match="no module"):
        checkpoint_blocks(model.unet, ["up_blocks.9"])
    assert _hooks(model.unet) == 0


# ------------------------------------------------------------------------------------------- estimates

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
