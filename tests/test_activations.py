"""Activation options: checkpointing and offload change memory, not gradients; the model is left as found."""

import contextlib

import pytest
import torch

from motiontransfer.activations import activation_options, checkpoint_blocks, offload_activations
from motiontransfer.backbones.unet3d import unet_checkpoint_units
from motiontransfer.config import DEFAULT_LAYERS
from motiontransfer.errors import ConfigError
from motiontransfer.features import FeatureHooks
from motiontransfer.losses import motion_loss
from motiontransfer.models import load_model


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
        ctx = activation_options(unet, "checkpoint", names=unet_checkpoint_units(unet, option.split("-")[1]))
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
    with activation_options(model.unet, "checkpoint", names=model.checkpoint_units("blocks")) as ckpt:
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
            with activation_options(unet, mode, names=model.checkpoint_units()):
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
            _model_grad(model, x, cond, src, activation_options(model.unet, "checkpoint", names=model.checkpoint_units("blocks")))
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
