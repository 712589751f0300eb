"""Feature hooks: capture by name, early exit, model left as found, gradients equal to a full forward."""

import pytest
import torch

from motiontransfer.config import DEFAULT_LAYERS
from motiontransfer.errors import ConfigError
from motiontransfer.features import FeatureHooks
from motiontransfer.losses import motion_loss, reduce_source
from motiontransfer.models import load_model


@pytest.fixture(scope="module")
def model(tiny_model):
    return load_model(str(tiny_model))


def _inputs(model, seed=0, frames=4):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(1, 4, frames, 8, 8, generator=g)
    cond = model.encode_prompts(["a red star"])
    return x, cond


def _all_hooks(module):
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in module.modules())


def test_captures_named_layers_with_frames_split(model):
    x, cond = _inputs(model)
    with FeatureHooks(model.unet, DEFAULT_LAYERS) as hooks:
        feats = model.features(hooks, x, 501, cond)
    assert list(feats) == list(DEFAULT_LAYERS)
    for name, f in feats.items():
        assert f.shape[:2] == (1, 4), name                     # (B, F, D, h, w)
        assert f.dim() == 5
    assert feats["up_blocks.1.upsamplers.0"].shape[-1] == 2 * feats["up_blocks.1.temp_convs.1"].shape[-1]


def test_unknown_layer_is_an_error_with_a_suggestion(model):
    with pytest.raises(ConfigError, match="unknown layer name.*did you mean"):
        with FeatureHooks(model.unet, ["up_blocks.1.resnet.1"]):
            pass
    assert _all_hooks(model.unet) == 0


def test_model_left_exactly_as_found(model):
    before = _all_hooks(model.unet)
    state = {k: v.clone() for k, v in model.unet.state_dict().items()}
    x, cond = _inputs(model)
    with pytest.raises(RuntimeError, match="boom"):
        with FeatureHooks(model.unet, DEFAULT_LAYERS) as hooks:
            model.features(hooks, x, 501, cond)
            raise RuntimeError("boom")
    assert _all_hooks(model.unet) == before == 0
    assert all(torch.equal(v, model.unet.state_dict()[k]) for k, v in state.items())
    assert all(type(m).forward is type(m).__dict__.get("forward", type(m).forward) for m in model.unet.modules())


def test_truncated_pass_skips_later_blocks(model):
    x, cond = _inputs(model)
    calls = []
    handles = [model.unet.get_submodule(n).register_forward_hook(lambda *a, n=n: calls.append(n))
               for n in ("up_blocks.2", "conv_out", "up_blocks.1.attentions.1")]
    try:
        with FeatureHooks(model.unet, DEFAULT_LAYERS) as hooks:
            model.features(hooks, x, 501, cond)
        assert calls == ["up_blocks.1.attentions.1"]            # runs before the upsampler; later blocks do not
        calls.clear()
        model.predict(x, 501, cond)                              # a full pass runs them all
        assert set(calls) == {"up_blocks.2", "conv_out", "up_blocks.1.attentions.1"}
    finally:
        for h in handles:
            h.remove()


def test_full_forward_unchanged_while_hooks_are_open(model):
    x, cond = _inputs(model)
    ref = model.predict(x, 301, cond)
    with FeatureHooks(model.unet, DEFAULT_LAYERS):
        inside = model.predict(x, 301, cond)
    assert torch.equal(ref, inside)


def test_features_read_off_the_cfg_pass_equal_a_truncated_pass(model):
    x, cond = _inputs(model)
    uncond = model.encode_prompts([""])
    with FeatureHooks(model.unet, DEFAULT_LAYERS) as hooks:
        alone = model.features(hooks, x, 401, cond)
        out, observed = model.predict_observed(hooks, x, 401, cond, uncond, 7.5)
    assert torch.equal(out, model.predict(x, 401, cond, uncond, 7.5))
    assert list(observed) == list(alone)
    for name in alone:                                          # the conditional half of the batch of 2
        assert observed[name].shape == alone[name].shape
        torch.testing.assert_close(observed[name], alone[name], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("kind", ["pairwise_cosine", "pairwise_l2", "features"])
def test_early_exit_gradients_equal_full_forward(model, kind):
    x_src, cond = _inputs(model, seed=1)
    x, _ = _inputs(model, seed=2)
    grads = []
    for stop_early in (True, False):
        with FeatureHooks(model.unet, DEFAULT_LAYERS, stop_early=stop_early) as hooks:
            with torch.no_grad():
                src = reduce_source(kind, model.features(hooks, x_src, 701, cond))
            xg = x.clone().requires_grad_(True)
            loss = motion_loss(kind, src, model.features(hooks, xg, 701, cond))
            loss.backward()
            grads.append(xg.grad.clone())
    assert grads[0].abs().sum() > 0
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-5, atol=1e-7)
