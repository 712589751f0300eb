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
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from diffusers import DDIMInverseScheduler, DDIMScheduler
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from .errors import ConfigError
from .video import atomic_path, is_temporary

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


STALE_SECONDS = 3600                        # a temporary this old in the cache was left by an interrupted write
FORMAT = "motiontransfer-inversion/1"      # written into every entry's metadata; other entries are recomputed


def latents_checksum(latents: dict[int, torch.Tensor]) -> str:
    """Hex sha256 over the timesteps, shapes, dtypes and bytes of the kept latents."""
    digest = hashlib.sha256()
    for t in sorted(latents):
        v = latents[t].detach().cpu().contiguous()
        digest.update(repr((t, tuple(v.shape), str(v.dtype))).encode())
        digest.update(v.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


@dataclass
class CacheEntry:
    path: Path
    bytes: int
    modified: float               # seconds since the epoch
    temporary: bool               # left by an interrupted write


class InversionCache:
    """Kept inverted latents on disk: `<dir>/<key>.safetensors`, written atomically.

    Each entry carries in its metadata what it holds (format, key, timesteps, shape, dtype, a checksum);
    `load` returns it only when all of that matches what the caller expects, and warns and returns None
    otherwise, so a damaged or foreign entry is recomputed, never used.
    """

    def __init__(self, directory: str | Path | None = None):
        self.directory = Path(directory) if directory else default_cache_dir()

    @staticmethod
    def key(frames_digest: str, model_identity: str, settings: dict) -> str:
        blob = json.dumps({"frames": frames_digest, "model": model_identity, **settings}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:24]

    def path(self, key: str) -> Path:
        return self.directory / f"{key}.safetensors"

    def load(self, key: str, *, timesteps: list[int], shape: tuple[int, ...],
             dtype: torch.dtype) -> dict[int, torch.Tensor] | None:
        """The entry's latents {t: (shape) dtype} for at least `timesteps`; None (with a warning when an entry is
        there) when it is missing or holds anything else."""
        path = self.path(key)
        if not path.exists():
            return None
        try:
            with safe_open(str(path), framework="pt") as file:
                meta = file.metadata() or {}
            latents = {int(k): v for k, v in load_file(path).items()}
        except Exception as e:              # a damaged entry is recomputed, not fatal
            logger.warning("ignoring unreadable cache entry %s (%s); recomputing", path, str(e)[:200])
            return None
        problem = self._problem(meta, latents, key, timesteps, tuple(shape), dtype)
        if problem:
            logger.warning("ignoring cache entry %s: %s; recomputing", path, problem)
            return None
        return latents

    @staticmethod
    def _problem(meta: dict, latents: dict[int, torch.Tensor], key: str, timesteps: list[int],
                 shape: tuple[int, ...], dtype: torch.dtype) -> str | None:
        if meta.get("format") != FORMAT:
            return f"not a {FORMAT} entry"
        if meta.get("key") != key:
            return "it was written for another input"
        if meta.get("timesteps") != json.dumps(sorted(latents)) or meta.get("shape") != json.dumps(list(shape)) \
                or meta.get("dtype") != str(dtype):
            return "its metadata does not match what it should hold"
        missing = sorted(set(timesteps) - set(latents))
        if missing:
            return f"it lacks timesteps {missing[:5]}"
        for t, v in latents.items():
            if tuple(v.shape) != shape or v.dtype != dtype:
                return f"x_{t} is {tuple(v.shape)} {v.dtype}, not {shape} {dtype}"
            if not torch.isfinite(v).all():
                return f"x_{t} holds NaN or infinite values"
        if meta.get("sha256") != latents_checksum(latents):
            return "its checksum does not match its content"
        return None

    def save(self, key: str, latents: dict[int, torch.Tensor]) -> Path:
        """Write the entry atomically, with its metadata. Raises on any failure; callers that can go on without
        the cache catch it (`pipeline.invert_latents`)."""
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.path(key)
        tensors = {str(t): v.detach().cpu().contiguous() for t, v in latents.items()}
        shapes = {tuple(v.shape) for v in tensors.values()}
        dtypes = {str(v.dtype) for v in tensors.values()}
        if len(shapes) != 1 or len(dtypes) != 1:
            raise ValueError(f"cache entries hold latents of one shape and dtype, got {shapes} {dtypes}")
        meta = {"format": FORMAT, "key": key, "timesteps": json.dumps(sorted(latents)),
                "shape": json.dumps(list(shapes.pop())), "dtype": dtypes.pop(),
                "sha256": latents_checksum(latents)}
        now = time.time()
        for entry in self.entries():             # what interrupted writes left, an hour ago or more
            if entry.temporary and now - entry.modified > STALE_SECONDS:
                entry.path.unlink(missing_ok=True)
        with atomic_path(path) as tmp:
            save_file(tensors, tmp, metadata=meta)
        return path

    def entries(self) -> list[CacheEntry]:
        """Every entry, and every temporary an interrupted write left, oldest first."""
        if not self.directory.is_dir():
            return []
        found = []
        for p in self.directory.iterdir():
            temporary = is_temporary(p)
            if p.is_file() and (p.suffix == ".safetensors" or temporary):
                stat = p.stat()
                found.append(CacheEntry(p, stat.st_size, stat.st_mtime, temporary))
        return sorted(found, key=lambda e: e.modified)

    def clear(self, *, older_than_days: float | None = None, larger_than_mb: float | None = None) -> list[CacheEntry]:
        """Remove the entries older than / larger than the limits given (all of them when none is); returns
        what was removed. Temporaries of interrupted writes go when older than an hour, or with everything."""
        removed = []
        now = time.time()
        for entry in self.entries():
            age_days = (now - entry.modified) / 86400
            if entry.temporary and older_than_days is None and larger_than_mb is None:
                chosen = True
            elif entry.temporary:
                chosen = age_days * 86400 > STALE_SECONDS and (older_than_days is None or age_days > older_than_days)
            else:
                chosen = ((older_than_days is None or age_days > older_than_days)
                          and (larger_than_mb is None or entry.bytes / 1e6 > larger_than_mb))
            if chosen:
                entry.path.unlink(missing_ok=True)
                removed.append(entry)
        return removed


def manage_cache(cache_dir: str | Path | None = None, *, clear: bool = False, older_than_days: float | None = None,
                 larger_than_mb: float | None = None) -> dict:
    """`motiontransfer cache`: the cache's entries (name, MB, age in days) and, with `clear`, those removed
    (`InversionCache.clear`). The limits only go with `clear`."""
    if not clear and (older_than_days is not None or larger_than_mb is not None):
        raise ConfigError("--older-than and --larger-than choose what --clear removes; add --clear")
    for name, value in (("--older-than", older_than_days), ("--larger-than", larger_than_mb)):
        if value is not None and not value >= 0:
            raise ConfigError(f"{name} must be 0 or more, got {value}")
    cache = InversionCache(cache_dir)
    removed = cache.clear(older_than_days=older_than_days, larger_than_mb=larger_than_mb) if clear else []
    now = time.time()

    def row(e: CacheEntry) -> dict:
        return {"name": e.path.name, "mb": round(e.bytes / 1e6, 3), "age_days": round((now - e.modified) / 86400, 2),
                "temporary": e.temporary}

    entries = cache.entries()
    return {"directory": str(cache.directory), "entries": [row(e) for e in entries],
            "total_mb": round(sum(e.bytes for e in entries) / 1e6, 3), "removed": [row(e) for e in removed],
            "removed_mb": round(sum(e.bytes for e in removed) / 1e6, 3)}


def default_cache_dir() -> Path:
    """$XDG_CACHE_HOME/motiontransfer/inversions, or ~/.cache/motiontransfer/inversions."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "motiontransfer" / "inversions"
