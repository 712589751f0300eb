"""The backbone protocol: what the method needs of a text-to-video model, whatever its family.

A backbone owns one family's call convention and nothing else knows it: the denoiser module that hooks and
activation checkpointing attach to (`denoiser`), the noise schedule (`schedule`), the latent's shape and the
family's size rules (`latent_shape`, `check_size`), prompts, frames <-> latents (`encode_prompts`,
`encode_frames`, `decode_latents`), the model's prediction with classifier-free guidance (`predict`), and hooked
features, always returned as (B, F', D, h', w') (`features`, `predict_observed`), so the losses never learn
which family made them. Latents are (B, C, F', h, w) everywhere; frames (F, H, W, 3) uint8.

`BackboneBase` holds what every family shares: the frozen components' device, dtype and offload, the model's
recommendations (`ModelDefaults`), and the vocabulary check of small models.
"""

from __future__ import annotations

import json
import logging
import os
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from ..config import QUANTIZATIONS, read_small_text
from ..errors import ModelError, MotionTransferError
from ..features import FeatureHooks
from ..schedules import Schedule

logger = logging.getLogger(__name__)

DEFAULT_FPS = 8.0            # output fps when the input has none (image folders) and the model says nothing
MAX_CONFIG_JSON_BYTES = 1_000_000      # a component's config.json is a few kB


@dataclass(frozen=True)
class ModelDefaults:
    """What a checkpoint recommends; `motiontransfer.json` in its folder may set any of these."""

    width: int
    height: int
    frames: int
    fps: float = DEFAULT_FPS
    negative_prompt: str | None = None     # None: the family's default (the reference's for UNet3D)
    method: dict | None = None             # TransferConfig fields the model recommends (e.g. its own init)
    vocabulary: tuple[str, ...] | None = None   # the words a small model was trained on; None: open vocabulary


class Backbone(Protocol):
    """One model family behind the method (module docstring)."""

    family: str                        # "unet3d" | "wan"
    path: Path
    identity: str
    defaults: ModelDefaults
    device: torch.device
    dtype: torch.dtype
    vae_slicing: bool
    cpu_offload: bool

    @property
    def denoiser(self) -> torch.nn.Module: ...
    @property
    def default_layers(self) -> tuple[str, ...]: ...
    @property
    def default_negative_prompt(self) -> str: ...

    def schedule(self, steps: int) -> Schedule: ...
    def latent_shape(self, frames: int, height: int, width: int) -> tuple[int, ...]: ...
    def check_size(self, frames: int, height: int, width: int) -> None: ...
    def valid_frames(self, available: int) -> int: ...
    def checkpoint_units(self, units: str = "layers") -> list[str]: ...
    def set_cpu_offload(self, enabled: bool) -> None: ...
    def encode_prompts(self, prompts: list[str]) -> torch.Tensor: ...
    def encode_frames(self, frames: np.ndarray, generator: torch.Generator | None = None) -> torch.Tensor: ...
    def decode_latents(self, latents: torch.Tensor, quantize: str = "round") -> np.ndarray: ...
    def predict(self, x: torch.Tensor, t: float, cond: torch.Tensor, uncond: torch.Tensor | None = None,
                scale: float = 1.0) -> torch.Tensor: ...
    def features(self, hooks: FeatureHooks, x: torch.Tensor, t: float,
                 cond: torch.Tensor) -> dict[str, torch.Tensor]: ...
    def predict_observed(self, hooks: FeatureHooks, x: torch.Tensor, t: float, cond: torch.Tensor,
                         uncond: torch.Tensor | None = None, scale: float = 1.0
                         ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]: ...


@dataclass
class BackboneBase:
    """What every family's adapter shares; the families add their components and call convention."""

    path: Path
    identity: str
    defaults: ModelDefaults
    device: torch.device
    dtype: torch.dtype
    vae: torch.nn.Module = None
    text_encoder: torch.nn.Module = None
    tokenizer: object = None
    scheduler_config: dict = None  # the folder's scheduler/scheduler_config.json
    vae_slicing: bool = False
    cpu_offload: bool = False      # text encoder and VAE live on the CPU and visit the device only to run
    _warned_prompts: set = field(default_factory=set, repr=False)   # prompts already warned about (check_words)

    def _offloaded(self) -> list[torch.nn.Module]:
        """The components that `cpu_offload` keeps on the CPU: the text encoder and the VAE."""
        return [m for m in (self.text_encoder, self.vae) if m is not None]

    @contextmanager
    def _running(self, module: torch.nn.Module):
        """With cpu_offload, moves `module` to the device for the duration, then back to the CPU."""
        if not self.cpu_offload or self.device.type == "cpu":
            yield module
            return
        module.to(self.device)
        try:
            yield module
        finally:
            module.to("cpu")
            if self.device.type == "cuda":
                torch.cuda.empty_cache()

    def set_cpu_offload(self, enabled: bool) -> None:
        self.cpu_offload = enabled
        target = "cpu" if enabled else self.device
        for module in self._offloaded():
            module.to(target)

    def check_words(self, prompt: str) -> list[str]:
        """The words of `prompt` outside the model's vocabulary (when it declares one), warned about once."""
        unknown = unknown_words(prompt, self.defaults.vocabulary)
        if unknown and prompt not in self._warned_prompts:
            self._warned_prompts.add(prompt)
            shown = ", ".join(repr(w[:30]) for w in unknown[:8]) + (" ..." if len(unknown) > 8 else "")
            logger.warning("the model does not know %s (it splits unknown words into letters and ignores their "
                           "meaning); the words it knows: %s", shown, ", ".join(self.defaults.vocabulary))
        return unknown


def unknown_words(prompt: str, vocabulary: tuple[str, ...] | None) -> list[str]:
    """The distinct words of `prompt` (lowercase, split at anything but letters and digits) that are not in
    `vocabulary`, in order of appearance; none when the vocabulary is None (an open-vocabulary model)."""
    if vocabulary is None:
        return []
    known = set(vocabulary)
    words = "".join(ch if ch.isalnum() else " " for ch in prompt.lower()).split()
    return list(dict.fromkeys(w for w in words if w not in known))


def to_uint8(pixels: torch.Tensor, quantize: str = "round") -> torch.Tensor:
    """Decoded pixels, nominally in [-1, 1] (any float dtype, any shape), as 8-bit levels, in float32 arithmetic:

        round     clamp to [-1, 1], then round((x + 1) x 127.5): the nearest level (ours)
        truncate  (x / 2 + 0.5) clamped to [0, 1], times 255, cut down to the level below: the reference's
                  (diffusers 0.20's `tensor2vid`, which it calls: `mul_(0.5).add_(0.5)`, `clamp_(0, 1)`,
                  `* 255`, `astype("uint8")`): one level below `round`'s wherever the fraction is 0.5 or more
    """
    if quantize not in QUANTIZATIONS:
        raise ValueError(f"quantize must be one of {', '.join(QUANTIZATIONS)}, got {quantize!r}")
    x = pixels.float()
    if quantize == "round":
        return ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return ((x * 0.5 + 0.5).clamp(0, 1) * 255).to(torch.uint8)       # float -> uint8 drops the fraction


# ------------------------------------------------------------------------------------- reading model folders

def read_json(path: Path) -> dict:
    """A small JSON object from a model folder; ModelError when it is large, unreadable or not an object."""
    text = read_small_text(path, MAX_CONFIG_JSON_BYTES, "model file", ModelError)
    try:
        data = json.loads(text)
    except ValueError as e:
        raise ModelError(f"cannot read {path} ({type(e).__name__}); the model folder is damaged") from None
    if not isinstance(data, dict):
        raise ModelError(f"{path} must hold a JSON object")
    return data


def check_bounds(source: Path, values: dict[str, tuple]) -> None:
    """Each value (value, low, high) must be an int within [low, high]; a one-line ModelError names the field."""
    for name, (value, low, high) in values.items():
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise ModelError(f"{source}: {name} = {str(value)[:40]} is outside the sane range {low}..{high}; "
                             f"the model folder is damaged or not a text-to-video checkpoint")


def physical_memory() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def check_weights(path: Path, components: tuple[str, ...], allow_unsafe: bool) -> dict[str, bool]:
    """Each weight component has a config.json and weights; returns, per component, whether they are
    safetensors. Pickled .bin weights only with `allow_unsafe` (they can run code when loaded)."""
    safe = {}
    for c in components:
        if not (path / c / "config.json").exists():
            raise ModelError(f"model folder {path} is incomplete: {c}/config.json is missing")
        has_safe = any((path / c).glob("*.safetensors"))
        has_bin = any((path / c).glob("*.bin"))
        if not has_safe and not has_bin:
            raise ModelError(f"model folder {path} is incomplete: {c}/ has no weights (*.safetensors)")
        if not has_safe and not allow_unsafe:
            raise ModelError(f"{path / c} has only pickled .bin weights, which can run code when loaded; convert "
                             f"them to safetensors or pass --allow-unsafe-weights if you trust the source")
        safe[c] = has_safe
    return safe


MAX_SMALL_FILE_BYTES = 64_000_000       # a tokenizer.json or vocabulary (umt5's is 16 MB); weights are not "small"


def check_components(path: Path, components: tuple[str, ...]) -> None:
    """Every component folder is there, and every file in them is a regular file (a symlink to a device or a
    pipe would be read without end by the loaders) and, unless weights, of a sane size."""
    import stat

    missing = [c for c in components if not (path / c).is_dir()]
    if missing:
        raise ModelError(f"model folder {path} is incomplete: missing {', '.join(m + '/' for m in missing)}; "
                         f"a text-to-video checkpoint needs {', '.join(c + '/' for c in components)}")
    for c in components:
        for f in (path / c).iterdir():
            try:
                mode = f.stat().st_mode
            except OSError:
                raise ModelError(f"{f} cannot be read (a broken link?); the model folder is damaged") from None
            if stat.S_ISDIR(mode):
                continue
            if not stat.S_ISREG(mode):
                raise ModelError(f"{f} is not a regular file (a device or a pipe?); the model folder is damaged")
            if f.suffix not in WEIGHT_SUFFIXES and f.stat().st_size > MAX_SMALL_FILE_BYTES:
                raise ModelError(f"{f} is over {MAX_SMALL_FILE_BYTES // 1_000_000} MB; a config or tokenizer file "
                                 f"is far smaller: the model folder is damaged")


WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".ckpt", ".gguf")


def check_memory(path: Path, estimate: int, fields: str) -> None:
    memory = physical_memory()
    if memory and estimate > memory:
        raise ModelError(f"{path}: its configs describe about {estimate / 1e9:.0f} GB of weights, more than this "
                         f"machine's {memory / 1e9:.0f} GB of memory ({fields}); the model folder is damaged or "
                         f"too large for this machine")


def load_error(path: Path, error: Exception) -> ModelError:
    """The one-line ModelError for a component that failed to load (out-of-memory errors are re-raised)."""
    if isinstance(error, MemoryError) or (isinstance(error, RuntimeError) and "out of memory" in str(error).lower()):
        raise error
    first = str(error).splitlines()[0][:200] if str(error) else type(error).__name__
    return ModelError(f"cannot load the model in {path}: {first}")


SCHEDULER_FIELDS = {"beta_schedule": ("linear", "scaled_linear", "squaredcos_cap_v2"),
                    "prediction_type": ("epsilon", "v_prediction", "sample", "flow_prediction")}


def check_loaded(path: Path, tokenizer, text_encoder, schedule) -> None:
    """What only the loaded components tell: the tokenizer's ids fit the text encoder's embedding table (a
    special token added in tokenizer_config.json gets a new id), and the scheduler config builds a schedule."""
    positions = getattr(text_encoder.config, "max_position_embeddings", None)     # CLIP's; UMT5 has none
    if positions is not None and tokenizer.model_max_length > positions:
        raise ModelError(f"the tokenizer in {path / 'tokenizer'} pads prompts to {tokenizer.model_max_length:.0f} "
                         f"tokens but the text encoder reads {positions} (tokenizer_config.json missing or "
                         f"damaged?); the model folder is damaged")
    vocab = getattr(text_encoder.config, "vocab_size", None)
    if vocab is not None and len(tokenizer) > vocab:
        raise ModelError(f"the tokenizer in {path / 'tokenizer'} has {len(tokenizer)} tokens but the text encoder "
                         f"only {vocab} embeddings (a special token added in tokenizer_config.json?); the model "
                         f"folder is damaged")
    try:
        schedule(10)
    except MotionTransferError:
        raise
    except Exception as e:               # diffusers' own checks of a config field
        first = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
        raise ModelError(f"{path / 'scheduler'}: its config cannot make a schedule ({first})") from None


def scheduler_config(path: Path) -> dict:
    """scheduler/scheduler_config.json, checked: the step count in range, the schedule and prediction kinds
    diffusers knows, a positive finite shift."""
    found = sorted((path / "scheduler").glob("*.json"))
    if not found:
        raise ModelError(f"model folder {path} is incomplete: scheduler/ has no scheduler_config.json")
    config = read_json(found[0])
    check_bounds(found[0], {"num_train_timesteps": (config.get("num_train_timesteps", 1000), 1, 100_000)})
    for key, allowed in SCHEDULER_FIELDS.items():
        if key in config and config[key] not in allowed:
            raise ModelError(f"{found[0]}: {key} = {str(config[key])[:40]} is not one of {', '.join(allowed)}; "
                             f"the model folder is damaged")
    for key in ("flow_shift", "shift"):
        value = config.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                  or not 0 < value < 1000):
            raise ModelError(f"{found[0]}: {key} = {str(value)[:40]} must be a number in (0, 1000)")
    return config
