"""Models on the meta device: built as the family's loader loads them (dtypes included), with the published sizes."""

import torch

from motiontransfer.models import load_model
from motiontransfer.tools.memory import parameter_bytes
from motiontransfer.tools.meta import WAN_1_3B, ModelSpec, frozen, meta_backbone


def _dtypes(module: torch.nn.Module) -> dict[str, torch.dtype]:
    return {name: t.dtype for name, t in (*module.named_parameters(), *module.named_buffers())}


def test_a_meta_wan_has_the_dtypes_and_shapes_the_loader_gives(tiny_wan):
    loaded = load_model(str(tiny_wan), device="cpu", dtype="bf16")
    spec = ModelSpec("wan", *(frozen(dict(getattr(loaded, c).config)) for c in ("transformer", "vae")),
                     frozen(loaded.text_encoder.config.to_diff_dict()), frozen(loaded.scheduler_config),
                     torch.bfloat16, text_tokens=8)
    meta = meta_backbone(spec)
    for component in ("transformer", "vae", "text_encoder"):
        real, counted = getattr(loaded, component), getattr(meta, component)
        assert _dtypes(counted) == _dtypes(real), component        # fp32 kept modules, fp32 VAE
        assert {n: p.shape for n, p in counted.named_parameters()} == {n: p.shape for n, p in real.named_parameters()}
    assert meta.latent_shape(9, 32, 32) == loaded.latent_shape(9, 32, 32)
    assert meta.schedule(6).timesteps == loaded.schedule(6).timesteps


def test_wan_1_3b_has_the_published_size():
    model = meta_backbone(WAN_1_3B)
    # the hub's transformer/ holds 5.68 GB of fp32 weights (two shards, 5 GB + 677 MB)
    assert 5.6e9 < 4 * sum(p.numel() for p in model.transformer.parameters()) < 5.7e9
    assert len(model.transformer.blocks) == 30 and model.default_layers == ("blocks.15",)
    assert model.latent_shape(81, 480, 832) == (1, 16, 21, 60, 104)
    assert 10 * 2 ** 30 < parameter_bytes(model.text_encoder) < 11 * 2 ** 30          # umt5-xxl's encoder, bf16
