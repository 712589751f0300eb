"""The cost of a run's UNet passes at ZeroScope size, in FLOPs counted without the weights: so that the pass
counts of a run on any model (`pipeline.new_counts`) predict the ratio of two recipes' times on a GPU.

One FLOP weight per kind of pass a run counts:

    unet_forward            one batch element of a full UNet pass (an inversion pass counts 1, a CFG pass 2)
    unet_truncated_forward  a pass up to the last hooked layer, batch 1 (source features; every guided iteration)
    unet_backward           the backward of that truncated pass, to the latent only (the weights are frozen); with
                            activation checkpointing (`activations: auto` on CUDA) it includes the recomputation
                            of the checkpointed layers' forwards, counted as it runs (a layer's recomputation stops
                            once it has rebuilt what the layer saved, so it costs less than a truncated forward)

`torch.utils.flop_counter.FlopCounterMode` counts them around the package's own calls (`UNet3DBackbone.predict`,
`.features`, `losses.motion_loss`, `activations.activation_options`) on ZeroScope's UNet built on the meta device
(`tools.memory.meta_model`): shapes only, no data. It counts matrix products, convolutions and attention, not
elementwise ops or normalisations. Attention takes SDPA's math path there, two batched products forward and four
backward, as the fused kernels (flash attention's backward recomputes one product more, which is left out).

    predicted_seconds_ratio(counts_a, counts_b)      time of a over b, if time goes with these FLOPs
"""

from __future__ import annotations

import functools
from typing import Mapping

import torch
from torch.utils.flop_counter import FlopCounterMode

from ..activations import activation_options
from ..config import ACTIVATION_MODES, DEFAULT_LAYERS
from ..errors import ConfigError
from ..features import FeatureHooks
from ..losses import motion_loss, reduce_source
from ..backbones.unet3d import UNet3DBackbone, unet_checkpoint_units
from . import zeroscope
from .memory import meta_model

PASSES = ("unet_forward", "unet_truncated_forward", "unet_backward")     # the keys of a run's counts


def _flops(fn) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def count_pass_flops(model: UNet3DBackbone, frames: int, height: int, width: int, *,
                     layers: tuple[str, ...] = DEFAULT_LAYERS, loss: str = "pairwise_cosine",
                     activations: str = "none", timestep: int = 981, text_tokens: int = 77,
                     vae_scale: int = zeroscope.VAE_SCALE) -> dict[str, int]:
    """FLOPs of each pass kind (`PASSES`) on `model` (on the meta device, or any other) at `frames` x `height` x
    `width` pixels, plus `cfg_forward` (a CFG pass, batch 2) and `recompute` (what checkpointing adds to a
    backward; 0 without it). Offloading activations (`offload`) computes what `none` does."""
    if activations not in ACTIVATION_MODES:
        raise ConfigError(f"activations must be one of {', '.join(ACTIVATION_MODES)}, got {activations!r}")
    if height % vae_scale or width % vae_scale:
        raise ConfigError(f"height and width must be multiples of {vae_scale}, got {height}x{width}")
    unet = model.unet.config
    x = torch.zeros(1, unet.in_channels, frames, height // vae_scale, width // vae_scale, device=model.device)
    cond = torch.zeros(1, text_tokens, unet.cross_attention_dim, device=model.device, dtype=model.dtype)
    mode = "checkpoint" if activations == "checkpoint" else "none"
    with torch.no_grad():
        cfg = _flops(lambda: model.predict(x, timestep, cond, cond, 10.0))
    with FeatureHooks(model.unet, layers, stop_early=True) as hooks:
        with torch.no_grad():
            features = {}                     # the counted pass also gives the source features: no second pass
            truncated = _flops(lambda: features.update(source=model.features(hooks, x, timestep, cond)))
            source = reduce_source(loss, features["source"])

        def iteration(mode: str):                 # as sampling.optimise_latent runs it, the Adam update left out
            units = unet_checkpoint_units(model.unet) if mode == "checkpoint" else None
            with activation_options(model.unet, mode, names=units), torch.enable_grad():
                latent = x.clone().requires_grad_(True)
                motion_loss(loss, source, model.features(hooks, latent, timestep, cond)).backward()

        plain = _flops(lambda: iteration("none")) - truncated
        backward = plain if mode == "none" else _flops(lambda: iteration(mode)) - truncated
    return {"unet_forward": cfg // 2, "unet_truncated_forward": truncated, "unet_backward": backward,
            "cfg_forward": cfg, "recompute": backward - plain}


@functools.lru_cache(maxsize=16)
def _meta_flops(unet_config: tuple, frames: int, height: int, width: int, dtype: torch.dtype,
                layers: tuple[str, ...], loss: str, activations: str) -> dict[str, int]:
    model = meta_model(dict(unet_config), None, None, dtype)
    return count_pass_flops(model, frames, height, width, layers=layers, loss=loss, activations=activations)


def pass_flops(unet_config: dict = zeroscope.UNET_CONFIG, frames: int = zeroscope.FRAMES,
               height: int = zeroscope.HEIGHT, width: int = zeroscope.WIDTH, dtype: torch.dtype = torch.float16, *,
               layers: tuple[str, ...] = DEFAULT_LAYERS, loss: str = "pairwise_cosine",
               activations: str = "checkpoint") -> dict[str, int]:
    """`count_pass_flops` on the UNet of `unet_config` (default: ZeroScope's at its size, 24 x 576x320) built on the
    meta device; `activations` as on CUDA by default (auto: checkpoint). Cached: a few seconds the first time."""
    key = tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in unet_config.items()))
    return dict(_meta_flops(key, frames, height, width, dtype, tuple(layers), loss, activations))


def predicted_flops(counts: Mapping[str, int], flops: Mapping[str, int]) -> int:
    """The FLOPs of a run's UNet passes: its counts (`pipeline.new_counts`) weighted by `flops` (`pass_flops`)."""
    return sum(counts.get(kind, 0) * flops[kind] for kind in PASSES)


def predicted_seconds_ratio(counts_a: Mapping[str, int], counts_b: Mapping[str, int],
                            flops: Mapping[str, int] | None = None, *, activations: str = "checkpoint") -> float:
    """How many times longer a run with `counts_a` takes than one with `counts_b`, if time goes with the FLOPs of
    their UNet passes (`flops`; default: `pass_flops` at ZeroScope size with `activations`). The rest of a run
    (loading, text encoder, VAE, the Adam updates) is left out: about 1% of a default run on an H200 (load aside;
    docs/results/gpu_zeroscope_h200.json)."""
    flops = flops or pass_flops(activations=activations)
    return predicted_flops(counts_a, flops) / predicted_flops(counts_b, flops)


__all__ = ["PASSES", "count_pass_flops", "pass_flops", "predicted_flops", "predicted_seconds_ratio"]
