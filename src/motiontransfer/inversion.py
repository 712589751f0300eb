"""DDIM inversion (paper Sec. 3; Song et al. 2021), deterministic, without classifier-free guidance.

`ddim_invert` runs diffusers' `DDIMInverseScheduler` from the clean latent x_0 up to the noisiest sampling
timestep and keeps x_t only at the timesteps that guided sampling will visit. The default number of inversion
steps equals the sampling steps, so each kept latent is exactly one inversion step apart from the next; the
reference ran 999 steps and kept all of them.

`InversionCache` stores the kept latents on disk (safetensors, written atomically), keyed by a hash of the
preprocessed frames, the model identity and the inversion settings, so a second prompt on the same video skips
the inversion.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Callable

import torch
from diffusers import DDIMInverseScheduler, DDIMScheduler
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from .errors import ConfigError
from .video import atomic_path

logger = logging.getLogger(__name__)

PredictFn = Callable[[torch.Tensor, int], torch.Tensor]   # (x_t (B, C, F, h, w), t) -> model output


def sampling_timesteps(scheduler_config: dict, steps: int) -> list[int]:
    """The DDIM sampling timesteps, noisiest first (ZeroScope, 50 steps: 981, 961, ..., 1)."""
    scheduler = DDIMScheduler.from_config(scheduler_config)
    scheduler.set_timesteps(steps)
    return [int(t) for t in scheduler.timesteps]


def inversion_schedule(scheduler_config: dict, steps: int, keep: list[int]) -> list[int]:
    """The timesteps an inversion of `steps` steps visits, ascending, up to the largest kept one.

    Raises ConfigError when a kept timestep is not on the inversion schedule (e.g. 50 sampling steps with 75
    inversion steps).
    """
    inverse = DDIMInverseScheduler.from_config(scheduler_config)
    inverse.set_timesteps(steps)
    schedule = [int(t) for t in inverse.timesteps]
    missing = sorted(set(keep) - set(schedule))
    if missing:
        raise ConfigError(f"{steps} inversion steps do not reach timesteps {missing[:5]}; use a multiple of the "
                          f"sampling steps for --inversion-steps")
    return schedule[:schedule.index(max(keep)) + 1]


def ddim_invert(predict: PredictFn, x0: torch.Tensor, scheduler_config: dict, steps: int, keep: list[int], *,
                progress: bool = True, callback: Callable[[int, int], None] | None = None) -> dict[int, torch.Tensor]:
    """Inverts x0 (B, C, F, h, w) with `steps` DDIM steps; returns {t: x_t} for every t in `keep`.

    The pass stops at the largest kept timestep (`inversion_schedule`).
    """
    inverse = DDIMInverseScheduler.from_config(scheduler_config)
    schedule = inversion_schedule(scheduler_config, steps, keep)
    inverse.set_timesteps(steps)
    kept: dict[int, torch.Tensor] = {}
    x = x0
    with torch.no_grad():
        for i, t in enumerate(tqdm(schedule, desc="inversion", disable=not progress, dynamic_ncols=True)):
            x = inverse.step(predict(x, t), t, x).prev_sample
            if t in keep:
                kept[t] = x.clone(memory_format=torch.contiguous_format)
            if callback is not None:
                callback(i, t)
    return kept


class InversionCache:
    """Kept inverted latents on disk: `<dir>/<key>.safetensors`, written atomically."""

    def __init__(self, directory: str | Path | None = None):
        default = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "motiontransfer" / "inversions"
        self.directory = Path(directory) if directory else default

    @staticmethod
    def key(frames_digest: str, model_identity: str, settings: dict) -> str:
        blob = json.dumps({"frames": frames_digest, "model": model_identity, **settings}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:24]

    def path(self, key: str) -> Path:
        return self.directory / f"{key}.safetensors"

    def load(self, key: str) -> dict[int, torch.Tensor] | None:
        path = self.path(key)
        if not path.exists():
            return None
        try:
            return {int(k): v for k, v in load_file(path).items()}
        except Exception as e:              # a damaged entry is recomputed, not fatal
            logger.warning("ignoring unreadable cache entry %s (%s)", path, e)
            return None

    def save(self, key: str, latents: dict[int, torch.Tensor]) -> Path:
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.path(key)
        with atomic_path(path) as tmp:
            save_file({str(t): v.detach().cpu().contiguous() for t, v in latents.items()}, tmp)
        return path
