"""Inversion of the source (paper Sec. 3), deterministic, without classifier-free guidance.

`invert_latent` runs the schedule's inversion (`schedules.py`: DDIM inversion, Song et al. 2021, for the UNet3D
family; the flow ODE backwards, Euler or midpoint, for flow models) from the clean latent x_0 up to the noisiest
sampling step and keeps the latents only at the sampling steps that guided sampling will visit, keyed by step
index. The default number of inversion steps equals the sampling steps, so each kept latent is exactly one
inversion step apart from the next; the reference ran 999 DDIM steps and kept all of them.

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
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from .errors import ConfigError
from .schedules import Schedule
from .video import atomic_path, is_temporary

logger = logging.getLogger(__name__)

PredictFn = Callable[[torch.Tensor, float], torch.Tensor]   # (x_t (B, C, F, h, w), model time) -> model output


def invert_latent(predict: PredictFn, x0: torch.Tensor, schedule: Schedule, steps: int, keep: list[int], *,
                  solver: str | None = None, progress: bool = True,
                  callback: Callable[[int, float], None] | None = None) -> dict[int, torch.Tensor]:
    """Inverts x0 (B, C, F, h, w) with `steps` inversion steps of `schedule`'s family (`Schedule.inversion`);
    returns {i: x_i} for every sampling step index i in `keep`. The pass stops at the noisiest kept step."""
    plan = schedule.inversion(steps, keep, solver)
    kept: dict[int, torch.Tensor] = {}
    x = x0
    with torch.no_grad():
        for j, t in enumerate(tqdm(plan.times, desc="inversion", disable=not progress, dynamic_ncols=True)):
            x = plan.step(predict, x, j)
            if j in plan.keep:
                kept[plan.keep[j]] = x.clone(memory_format=torch.contiguous_format)
            if callback is not None:
                callback(j, t)
    return kept


STALE_SECONDS = 3600                        # a temporary this old in the cache was left by an interrupted write
FORMAT = "motiontransfer-inversion/2"      # in every entry's metadata (2: keyed by step index); others are recomputed


def latents_checksum(latents: dict[int, torch.Tensor]) -> str:
    """Hex sha256 over the step indices, shapes, dtypes and bytes of the kept latents."""
    digest = hashlib.sha256()
    for i in sorted(latents):
        v = latents[i].detach().cpu().contiguous()
        digest.update(repr((i, tuple(v.shape), str(v.dtype))).encode())
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

    Each entry carries in its metadata what it holds (format, key, step indices, shape, dtype, a checksum);
    `load` returns it only when all of that matches what the caller expects, and warns and returns None
    otherwise, so a damaged or foreign entry is recomputed, never used.
    """

    def __init__(self, directory: str | Path | None = None):
        self.directory = Path(directory) if directory else default_cache_dir()

    @staticmethod
    def key(frames_digest: str, model_identity: str, settings: dict) -> str:
        blob = json.dumps({"frames": frames_digest, "model": model_identity, **settings}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:KEY_CHARS]

    def path(self, key: str) -> Path:
        return self.directory / f"{key}.safetensors"

    def load(self, key: str, *, steps: list[int], shape: tuple[int, ...],
             dtype: torch.dtype) -> dict[int, torch.Tensor] | None:
        """The entry's latents {step index: (shape) dtype} for at least `steps`; None (with a warning when an entry
        is there) when it is missing or holds anything else."""
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
        problem = self._problem(meta, latents, key, steps, tuple(shape), dtype)
        if problem:
            logger.warning("ignoring cache entry %s: %s; recomputing", path, problem)
            return None
        return latents

    @staticmethod
    def _problem(meta: dict, latents: dict[int, torch.Tensor], key: str, steps: list[int],
                 shape: tuple[int, ...], dtype: torch.dtype) -> str | None:
        if meta.get("format") != FORMAT:
            return f"not a {FORMAT} entry"
        if meta.get("key") != key:
            return "it was written for another input"
        if meta.get("steps") != json.dumps(sorted(latents)) or meta.get("shape") != json.dumps(list(shape)) \
                or meta.get("dtype") != str(dtype):
            return "its metadata does not match what it should hold"
        missing = sorted(set(steps) - set(latents))
        if missing:
            return f"it lacks steps {missing[:5]}"
        for i, v in latents.items():
            if tuple(v.shape) != shape or v.dtype != dtype:
                return f"the latent of step {i} is {tuple(v.shape)} {v.dtype}, not {shape} {dtype}"
            if not torch.isfinite(v).all():
                return f"the latent of step {i} holds NaN or infinite values"
        if meta.get("sha256") != latents_checksum(latents):
            return "its checksum does not match its content"
        return None

    def save(self, key: str, latents: dict[int, torch.Tensor]) -> Path:
        """Write the entry atomically, with its metadata. Raises on any failure; callers that can go on without
        the cache catch it (`pipeline.invert_latents`)."""
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.path(key)
        tensors = {str(i): v.detach().cpu().contiguous() for i, v in latents.items()}
        shapes = {tuple(v.shape) for v in tensors.values()}
        dtypes = {str(v.dtype) for v in tensors.values()}
        if len(shapes) != 1 or len(dtypes) != 1:
            raise ValueError(f"cache entries hold latents of one shape and dtype, got {shapes} {dtypes}")
        meta = {"format": FORMAT, "key": key, "steps": json.dumps(sorted(latents)),
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
        """Every entry this cache wrote, and every temporary an interrupted write of one left, oldest first.
        Other files in the folder (a model's weights, say) are neither listed nor ever removed: an entry is a
        safetensors file whose metadata names this cache's format, or whose name is a cache key (a damaged
        entry); a temporary is `atomic_path`'s of such a name."""
        if not self.directory.is_dir():
            return []
        found = []
        for p in self.directory.iterdir():
            if not p.is_file() or p.is_symlink():
                continue
            temporary = is_temporary(p)
            if temporary:
                ours = is_key(p.name[1:].split(".safetensors.tmp-")[0]) and ".safetensors.tmp-" in p.name
            else:
                ours = p.suffix == ".safetensors" and (is_key(p.stem) or written_here(p))
            if ours:
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


KEY_CHARS = 24                              # InversionCache.key: hex digits of a sha256


def is_key(name: str) -> bool:
    """Whether `name` is a cache key (`InversionCache.key`)."""
    return len(name) == KEY_CHARS and all(c in "0123456789abcdef" for c in name)


def written_here(path: Path) -> bool:
    """Whether the safetensors file `path` is an inversion-cache entry: its metadata names the cache's format
    (any version). Reads the header only."""
    try:
        with safe_open(str(path), framework="pt") as file:
            meta = file.metadata() or {}
    except Exception:
        return False
    return str(meta.get("format", "")).startswith(FORMAT.split("/")[0] + "/")


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
