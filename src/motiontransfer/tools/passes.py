"""The cost of a run's denoiser passes in FLOPs, counted without the weights, and the passes a recipe makes: so
that the pass counts of a run on any model (`pipeline.new_counts`) predict the ratio of two recipes' times on a
GPU.

One FLOP weight per kind of pass a run counts (the names are the run record's, `unet_*` for either family):

    unet_forward            one batch element of a full denoiser pass (an inversion pass counts 1, a CFG pass 2)
    unet_truncated_forward  a pass up to the last hooked layer, batch 1 (source features; every guided iteration)
    unet_backward           the backward of that truncated pass, to the latent only (the weights are frozen); with
                            activation checkpointing (`activations: auto` on CUDA) it includes the recomputation
                            of the checkpointed units' forwards, counted as it runs (a unit's recomputation stops
                            once it has rebuilt what the unit saved, so it costs less than a truncated forward)

`torch.utils.flop_counter.FlopCounterMode` counts them around the package's own calls (the backbone's `predict`,
`features`, `losses.motion_loss`, `activations.activation_options`) on a model built on the meta device
(`tools.meta`: ZeroScope's UNet by default, Wan2.1-1.3B's transformer with `model=meta.WAN_1_3B`): shapes only,
no data. It counts matrix products, convolutions and attention, not elementwise ops or normalisations.
Attention takes SDPA's math path there, two batched products forward and four backward, as the fused kernels
(flash attention's backward recomputes one product more, which is left out).

    run_counts(config, schedule)                     the passes a run of `config` makes, from the recipe
    predicted_seconds_ratio(counts_a, counts_b)      time of a over b, if time goes with these FLOPs
"""

from __future__ import annotations

import functools
from typing import Mapping

import torch
from torch.utils.flop_counter import FlopCounterMode

from ..activations import activation_options
from ..backbones.base import Backbone
from ..config import ACTIVATION_MODES, TransferConfig
from ..errors import ConfigError
from ..features import FeatureHooks
from ..losses import motion_loss, reduce_source
from ..sampling import guided_steps
from ..schedules import Schedule
from . import zeroscope
from .meta import ModelSpec, latent_shape, meta_backbone, text_width, unet3d_spec

PASSES = ("unet_forward", "unet_truncated_forward", "unet_backward")     # the keys of a run's counts


def _flops(fn) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def count_pass_flops(model: Backbone, frames: int, height: int, width: int, *,
                     layers: tuple[str, ...] | None = None, loss: str = "pairwise_cosine",
                     activations: str = "none", timestep: float = 981, text_tokens: int = 77,
                     vae_scale: int = zeroscope.VAE_SCALE) -> dict[str, int]:
    """FLOPs of each pass kind (`PASSES`) on `model` (on the meta device, or any other) at `frames` x `height` x
    `width` pixels, plus `cfg_forward` (a CFG pass, batch 2 or two calls) and `recompute` (what checkpointing
    adds to a backward; 0 without it). `layers`: the family's default when None; `vae_scale` for a UNet3D built
    without its VAE. Offloading activations (`offload`) computes what `none` does."""
    if activations not in ACTIVATION_MODES:
        raise ConfigError(f"activations must be one of {', '.join(ACTIVATION_MODES)}, got {activations!r}")
    layers = layers or model.default_layers
    x = torch.zeros(latent_shape(model, frames, height, width, vae_scale), device=model.device)
    cond = torch.zeros(1, text_tokens, text_width(model), device=model.device, dtype=model.dtype)
    mode = "checkpoint" if activations == "checkpoint" else "none"
    with torch.no_grad():
        cfg = _flops(lambda: model.predict(x, timestep, cond, cond, 10.0))
    with FeatureHooks(model.denoiser, layers, stop_early=True) as hooks:
        with torch.no_grad():
            features = {}                     # the counted pass also gives the source features: no second pass
            truncated = _flops(lambda: features.update(source=model.features(hooks, x, timestep, cond)))
            source = reduce_source(loss, features["source"])

        def iteration(mode: str):                 # as sampling.optimise_latent runs it, the Adam update left out
            units = model.checkpoint_units() if mode == "checkpoint" else None
            with activation_options(model.denoiser, mode, names=units), torch.enable_grad():
                latent = x.clone().requires_grad_(True)
                motion_loss(loss, source, model.features(hooks, latent, timestep, cond)).backward()

        plain = _flops(lambda: iteration("none")) - truncated
        backward = plain if mode == "none" else _flops(lambda: iteration(mode)) - truncated
    return {"unet_forward": cfg // 2, "unet_truncated_forward": truncated, "unet_backward": backward,
            "cfg_forward": cfg, "recompute": backward - plain}


@functools.lru_cache(maxsize=16)
def _meta_flops(spec: ModelSpec, frames: int, height: int, width: int, layers: tuple[str, ...] | None, loss: str,
                activations: str) -> dict[str, int]:
    return count_pass_flops(meta_backbone(spec), frames, height, width, layers=layers, loss=loss,
                            activations=activations, text_tokens=spec.text_tokens)


def pass_flops(unet_config: dict = zeroscope.UNET_CONFIG, frames: int | None = None, height: int | None = None,
               width: int | None = None, dtype: torch.dtype = torch.float16, *, model: ModelSpec | None = None,
               layers: tuple[str, ...] | None = None, loss: str = "pairwise_cosine",
               activations: str = "checkpoint") -> dict[str, int]:
    """`count_pass_flops` on the denoiser of `model` (a `ModelSpec`; None: the UNet3D of `unet_config`, by default
    ZeroScope's) built on the meta device, at `frames` x `height` x `width` (default: the model's native size,
    ZeroScope's 24 x 576x320); `activations` as on CUDA by default (auto: checkpoint). Cached: a few seconds the
    first time."""
    spec = model.only("vae") if model is not None else unet3d_spec(unet_config, None, None, dtype)
    frames, height, width = (given or native for given, native in zip((frames, height, width), spec.size))
    return dict(_meta_flops(spec, frames, height, width, None if layers is None else tuple(layers), loss,
                            activations))


def run_counts(config: TransferConfig, schedule: Schedule, *, plain: bool = False,
               cached: bool = False) -> dict[str, int]:
    """The denoiser passes (`pipeline.new_counts`' keys) a transfer with `config` makes on a model with
    `schedule`'s family, worked out from the recipe as `pipeline.generate` runs it: the inversion up the schedule
    to its noisiest kept step (`Schedule.inversion`; none when `cached`), one CFG pass per sampling step, and at
    each optimised guided step (every `reuse_every`-th of the window) the source's truncated pass and
    `iterations` truncated forwards, each with its backward. `plain`: text-to-video, the sampling passes only.
    `config.guidance_scale` as the run resolves it (a model's recommendation, e.g. Wan's 5.0, applied). Not for
    `early_stop` or `restart` (their counts depend on the run) or `init: sdedit`."""
    if config.early_stop or config.restart or config.init == "sdedit":
        raise ConfigError("run_counts works the passes out for a recipe without early_stop, restart or sdedit; "
                          "read them off a run's record instead")
    cfg = 2 if config.guidance_scale != 1.0 else 1
    counts = {"unet_forward": cfg * config.steps, "unet_truncated_forward": 0, "unet_backward": 0}
    if plain:
        return counts
    guided = guided_steps(config.steps, config.guidance_window) if config.iterations > 0 else []
    optimised = guided[::config.reuse_every]
    if not cached and (config.init in ("lf", "inverted") or guided):          # pipeline.needs_inversion
        plan = schedule.inversion(config.inversion_steps or config.steps, sorted(set(guided) | {0}))
        counts["unet_forward"] += len(plan.times) * plan.passes_per_step
    counts["unet_truncated_forward"] = len(optimised) * (1 + config.iterations)
    counts["unet_backward"] = len(optimised) * config.iterations
    return counts


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


__all__ = ["PASSES", "count_pass_flops", "pass_flops", "run_counts", "predicted_flops", "predicted_seconds_ratio"]
