"""Orchestration: video in, edited video out. One public function per subcommand, one result type each.

    transfer(video, prompt)          invert -> initial latent (Eq. 4) -> guided sampling (Eq. 5) -> decode -> outputs
    transfer_many(video, prompts)    the same for several prompts, sharing the inversion and the source features
    invert(video)                    fills the inversion cache only
    analyze(video)                   feature inversion (Eq. 1): source prompt, random init, several seeds
    text_to_video(prompt)            plain generation, the baseline

Phases are timed and UNet passes counted; both go to `run.json` with the resolved config, the seed, the
library versions, the model identity and the guidance losses.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import platform
import re
import secrets
import time
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from . import __version__
from .activations import activation_options
from .backbones import Backbone
from .config import (INVERT_IGNORES, MAX_PROMPT_CHARS, METHOD_OPTIONS, InputLimits, TransferConfig, explicit_keys,
                     resolve, short)
from .errors import ConfigError, ModelError, OutputError
from .features import FeatureHooks
from .initialization import initial_latent, sdedit_latent
from .inversion import InversionCache, invert_latent
from .losses import motion_loss, reduce_source
from .models import load_model
from .sampling import SampleHistory, guided_sample, guided_steps
from .schedules import Schedule
from .video import (Video, atomic_path, atomic_write_text, check_input, crop_region, describe_fit, folder_lock,
                    frames_digest, is_temporary, read_video, remove_stale_temporaries, resize_frames, side_by_side,
                    write_frames, write_video)

logger = logging.getLogger(__name__)

PREVIEW_MIN_SIZE = 256       # videos smaller than this are written upscaled (nearest) so players show them


# -------------------------------------------------------------------------------------------- bookkeeping

class Timer:
    """Wall time per named phase, in seconds."""

    def __init__(self):
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, phase: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[phase] = self.seconds.get(phase, 0.0) + time.perf_counter() - start


def versions() -> dict[str, str]:
    import diffusers
    import transformers
    return {"motiontransfer": __version__, "python": platform.python_version(), "torch": torch.__version__,
            "diffusers": diffusers.__version__, "transformers": transformers.__version__, "numpy": np.__version__}


def environment() -> dict:
    """Versions, the device `auto` picks, threads and the shipped model (`motiontransfer env`)."""
    import os

    from .models import pick_device, shipped_model_path

    return versions() | {"device": str(pick_device("auto")), "cuda": torch.cuda.is_available(),
                         "torch_threads": torch.get_num_threads(),
                         "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
                         "shipped_model": str(shipped_model_path()),
                         "inversion_cache": str(InversionCache().directory),
                         "shipped_model_present": shipped_model_path().exists()}


class ModelCache:
    """The loaded model, kept between calls in this process, one at a time.

    Loading depends on (model, device, dtype, allow_unsafe_weights): a call with another key drops the model held
    and loads the new one. The runtime options that need no reload (`vae_slicing`, `cpu_offload`) are set on the
    model held at every `get`, so each call runs with its own config's; they are the only state a call changes
    on it. `clear()` frees it.
    """

    def __init__(self):
        self._key: tuple | None = None
        self._model: Backbone | None = None

    def get(self, config: TransferConfig) -> Backbone:
        key = (config.model, config.device, config.dtype, config.allow_unsafe_weights)
        if key != self._key:
            self.clear()
            self._model = load_model(config.model, device=config.device, dtype=config.dtype,
                                     allow_unsafe_weights=config.allow_unsafe_weights)
            self._key = key
        model = self._model
        model.vae_slicing = config.vae_slicing
        if model.cpu_offload != config.cpu_offload:
            model.set_cpu_offload(config.cpu_offload)
        return model

    def clear(self) -> None:
        self._key = self._model = None


MODELS = ModelCache()        # the process's; every public function of this module loads through it


def get_model(config: TransferConfig) -> Backbone:
    """The model `config` names, from the process's cache (`MODELS`), with `config`'s runtime options set."""
    return MODELS.get(config)


def fill_from_model(config: TransferConfig, model: Backbone, explicit: set[str] = frozenset(),
                    preset: str | None = None) -> TransferConfig:
    """Replaces the `None` fields with what the model recommends, and applies the model's recommended method
    options (its family's, then `motiontransfer.json`'s `method_defaults`) to every option not in `explicit`.
    The size must then fit the model's family (`Backbone.check_size`)."""
    if preset == "reference" and model.family != "unet3d":
        raise ConfigError(f"--preset reference is the DMT reference recipe on ZeroScope's UNet3D (its layers, DDIM "
                          f"inversion to 999, restart); {model.path.name} is a {model.family} model: leave the "
                          f"preset out (the default recipe runs on every family)")
    d = model.defaults
    recommended = {k: v for k, v in (d.method or {}).items() if k not in explicit}
    unknown = set(recommended) - set(config.to_dict())
    if unknown:
        raise ConfigError(f"{model.path}/motiontransfer.json recommends unknown options "
                          f"{short(sorted(map(str, unknown)))}")
    refused = sorted(set(recommended) - set(METHOD_OPTIONS))
    if refused:                  # where files go, what runs, what is cached: the user's to say, not a model's
        logger.warning("ignoring %s in %s/motiontransfer.json: a model may recommend method options only",
                       ", ".join(refused), model.path)
        recommended = {k: v for k, v in recommended.items() if k in METHOD_OPTIONS}
    if recommended:
        logger.info("model recommends %s", ", ".join(f"{k}={v}" for k, v in recommended.items()))
        config = config.replace(**{k: tuple(v) if isinstance(v, list) else v for k, v in recommended.items()})
    negative = config.negative_prompt
    if negative is None:
        negative = d.negative_prompt if d.negative_prompt is not None else model.default_negative_prompt
    config = config.replace(frames=config.frames or d.frames, width=config.width or d.width,
                            height=config.height or d.height, negative_prompt=negative,
                            inversion_steps=config.inversion_steps or config.steps,
                            layers=config.layers or model.default_layers,
                            seed=config.seed if config.seed is not None else secrets.randbits(31))
    model.check_size(config.frames, config.height, config.width)
    return config


def load_source(video: str | Path | Video | np.ndarray, config: TransferConfig, fps: float,
                limits: InputLimits | None = None, *, shorter: Callable[[int], int] | None = None) -> Video:
    """Reads (only the frames needed, within `limits`) and resizes the source; arrays (F, H, W, 3) uint8 are
    taken as they are, at `fps`. With `shorter` (the model's `valid_frames`, when --frames was not given), a clip
    with fewer frames than `config.frames` gives the longest count the model takes (said in the fit line)."""
    if isinstance(video, np.ndarray):
        video = Video(frames=video, fps=fps, source="<array>")
    elif not isinstance(video, Video):           # each frame fitted as it is decoded: one source frame at a time
        video = read_video(video, frames=config.frames, stride=config.stride, start=config.start, limits=limits,
                           allow_fewer=shorter is not None, fit=lambda frame: fit_frames(frame[None], config)[0])
    frames = video.frames[:config.frames]
    notes = []
    usable = shorter(len(frames)) if shorter is not None and len(frames) < config.frames else 0
    if usable >= 2:
        notes.append(f"the clip has {len(frames)} frames, fewer than the model's {config.frames}: using {usable}")
        frames = frames[:usable]
    if len(frames) < config.frames and not notes:
        raise ConfigError(f"the video has {len(frames)} frames; {config.frames} are needed")
    width_in, height_in = video.size or frames.shape[1:3][::-1]
    if video.size is None:
        frames = fit_frames(frames, config)
    if config.region is not None or (height_in, width_in) != (config.height, config.width):
        notes.append(describe_fit(width_in, height_in, config.width, config.height, config.resize, config.region))
    fit = "; ".join(notes)
    if fit:
        logger.info("%s", fit)
    return Video(frames=frames, fps=video.fps, source=video.source, fit=fit)


def fit_frames(frames: np.ndarray, config: TransferConfig) -> np.ndarray:
    """(F, H, W, 3) source frames cut to `config.region` and brought to the model's size (`config.resize`)."""
    if config.region is not None:
        frames = crop_region(frames, config.region)
    if config.region is not None or frames.shape[1:3] != (config.height, config.width):
        frames = resize_frames(frames, config.width, config.height, config.resize)
    return frames


def read_source(video, config: TransferConfig, model: Backbone, explicit: set[str], fps: float | None,
                limits: InputLimits | None) -> tuple[Video, TransferConfig]:
    """`load_source` at the model's rate, a shorter clip fitted to the model when --frames was not given; the
    config with the frame count used."""
    shorter = None if "frames" in explicit else model.valid_frames
    source = load_source(video, config, fps or model.defaults.fps, limits, shorter=shorter)
    return source, config.replace(frames=len(source.frames))


def check_source(video, config: TransferConfig, fps: float | None) -> None:
    """Cheap checks of the source and of the options that select from it, before the model loads: the path
    exists and has a readable type; `start`/`stride` need a file (slice an array yourself); `fps` is for arrays
    and image folders, whose frames carry no rate."""
    if fps is not None and (isinstance(fps, bool) or not isinstance(fps, (int, float)) or not 0 < fps <= 1000):
        raise ConfigError(f"--fps must be a number in (0, 1000], got {short(fps)}")
    if isinstance(video, (str, Path)):
        path = Path(video)
        check_input(path)
        if fps is not None and not path.is_dir():
            raise ConfigError(f"--fps sets the rate of an image folder; {path.name} has its own, so --fps would do "
                              f"nothing: leave it out (--stride changes the rate)")
    elif isinstance(video, np.ndarray) and (config.start != 0 or config.stride != 1):
        raise ConfigError(f"start={config.start}, stride={config.stride} select frames of a file; for an array "
                          f"they would do nothing: pass frames[start::stride] instead")


def slug(text: str, limit: int = 40) -> str:
    """A folder name from `text`: lower-case ASCII letters and digits, runs of anything else as "-", cut at
    `limit`; "empty" when nothing is left."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:limit].strip("-") or "empty"


def prompt_folder_names(prompts: list[str], limit: int = 40) -> list[str]:
    """One distinct folder name per prompt: its `slug`, followed by 8 hex digits of the prompt's hash when the
    slug loses part of it (cut at `limit`, or nothing left, as with non-ASCII prompts) or when another prompt
    of the list has the same slug (case and punctuation are dropped). Raises ConfigError for a repeated prompt."""
    repeated = sorted({p for p in prompts if prompts.count(p) > 1})
    if repeated:
        raise ConfigError(f"the prompt {_clip(repeated[0])!r} is given more than once")
    slugs = [slug(p, limit) for p in prompts]
    names = []
    for prompt, name in zip(prompts, slugs):
        lossy = name == "empty" or len(slug(prompt, limit=len(prompt) + 1)) > limit
        if lossy or slugs.count(name) > 1:
            name = f"{name}-{hashlib.sha256(prompt.encode()).hexdigest()[:8]}"
        names.append(name)
    return names


def _clip(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


def default_output_dir(video: Any, prompt: str, name: str | None = None) -> Path:
    """outputs/<video>-<prompt's folder name> (`name`, from `prompt_folder_names` over all the run's prompts;
    the prompt's own otherwise)."""
    stem = Path(str(getattr(video, "source", video))).stem if not isinstance(video, np.ndarray) else "array"
    return Path("outputs") / f"{slug(stem, 30)}-{name or prompt_folder_names([prompt])[0]}"


def check_output_dir(path: Path, overwrite: bool) -> None:
    """Raise `OutputError` unless a result may be written to `path`: it is absent, an empty folder, or (with
    `overwrite`) a folder holding an earlier result (`run.json`). Temporaries of interrupted runs do not count."""
    if path.exists() and not path.is_dir():
        raise OutputError(f"{path} is a file, not a folder; choose another --output-dir")
    entries = [e for e in path.iterdir() if not is_temporary(e)] if path.is_dir() else []
    if not entries:
        return
    if not (path / "run.json").is_file():
        raise OutputError(f"{path} holds files but no result (no run.json); choose another --output-dir, or "
                          f"empty it first")
    if not overwrite:
        raise OutputError(f"{path} already holds a result; pass --overwrite to replace it or choose another "
                          f"--output-dir")


@contextmanager
def result_folders(directories: list[Path], overwrite: bool):
    """Lock every result folder (`video.folder_lock`: a concurrent run into one of them fails at once), remove
    what interrupted runs left beside them, and check each may be written; the locks hold until the block ends.
    Results are then written whole with `write_outputs`."""
    with ExitStack() as stack:
        for d in directories:
            stack.enter_context(folder_lock(d))
            remove_stale_temporaries(d)
            check_output_dir(d, overwrite)
        yield directories


# ---------------------------------------------------------------------------------------------- progress

@dataclass(frozen=True)
class ProgressEvent:
    """One finished step of a long loop, for front ends (the web UI's progress bar): `phase` is "inversion" or
    "sampling"; `step` counts from 1 to `total`; sampling steps name the prompt (`prompt_index` of
    `prompt_count`) and, at a guided step, the guidance loss after its optimisation."""

    phase: str
    step: int
    total: int
    prompt_index: int = 0
    prompt_count: int = 1
    loss: float | None = None


ProgressFn = Callable[[ProgressEvent], None]


# ---------------------------------------------------------------------------------------------- inversion

def stream_generator(seed: int, stream: str) -> torch.Generator:
    """A CPU generator for one named use of the run's seed, on a stream of its own: its draws neither repeat nor
    shift those of `torch.Generator().manual_seed(seed)` (the initial noise, the restart noise), so a result does
    not depend on whether this use ran (e.g. an inversion read from the cache). The CPU generator keeps 32 bits
    of a seed, hence the 32-bit hash."""
    digest = hashlib.sha256(f"{seed}/{stream}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:4], "little"))


def encode_source(model: Backbone, frames: np.ndarray, config: TransferConfig) -> torch.Tensor:
    """x_0 of the source frames (1, C, F, h, w): the VAE posterior's mean, or with `vae_encode: sample` (the
    reference) a posterior sample drawn from the run's seed."""
    generator = stream_generator(config.seed, "vae_encode") if config.vae_encode == "sample" else None
    return model.encode_frames(frames, generator=generator)


def inversion_settings(config: TransferConfig, keep: list[int], dtype: torch.dtype) -> dict:
    """What the inverted latents depend on besides the frames and the model: the inversion cache's key. A
    posterior sample depends on the seed; the mean's key is the same as before `vae_encode` existed."""
    settings = {"steps": config.steps, "inversion_steps": config.inversion_steps,
                "source_prompt": config.source_prompt, "keep": sorted(keep), "dtype": str(dtype)}
    if config.inversion_solver is not None:
        settings["inversion_solver"] = config.inversion_solver
    if config.vae_encode != "mean":
        settings |= {"vae_encode": config.vae_encode, "seed": config.seed}
    return settings


@dataclass
class Inverted:
    latents: dict[int, torch.Tensor]          # {step index: its latent (1, C, F', h, w)} on the model's device
    cached: bool                              # read from the cache
    key: str
    saved: bool = False                       # written to the cache by this call


def invert_latents(model: Backbone, frames: np.ndarray, config: TransferConfig, keep: list[int], *,
                   progress: bool, timer: Timer, counts: dict, on_progress: ProgressFn | None = None) -> Inverted:
    """The inverted latents at the sampling step indices `keep`, from the cache or computed (and cached)."""
    cache = InversionCache(config.cache_dir)
    key = cache.key(frames_digest(frames), model.identity, inversion_settings(config, keep, model.dtype))
    shape = model.latent_shape(*frames.shape[:3])
    if config.use_cache:
        hit = cache.load(key, steps=keep, shape=shape, dtype=model.dtype)
        if hit is not None:
            logger.info("reusing the cached inversion %s", cache.path(key))
            return Inverted({t: v.to(model.device) for t, v in hit.items()}, cached=True, key=key)
    with timer("encode"):
        x0 = encode_source(model, frames, config)
    cond = model.encode_prompts([config.source_prompt])

    def predict(x, t):
        counts["unet_forward"] += 1
        return model.predict(x, t, cond)

    with timer("inversion"):
        schedule = model.schedule(config.steps)
        step = None
        if on_progress is not None:
            total = len(schedule.inversion(config.inversion_steps, keep, config.inversion_solver).times)

            def step(i, t):
                on_progress(ProgressEvent("inversion", i + 1, total))
        latents = invert_latent(predict, x0, schedule, config.inversion_steps, keep,
                                solver=config.inversion_solver, progress=progress, callback=step)
    latents = {t: v.to(model.dtype) for t, v in latents.items()}
    if not all(torch.isfinite(v).all() for v in latents.values()):
        raise ModelError(f"the inversion of the source holds NaN or infinite values: {model_fault(model)}")
    saved = False
    if config.use_cache:
        try:
            cache.save(key, latents)
            saved = True
        except Exception as e:             # a full disk, a read-only folder...: the transfer goes on without it
            logger.warning("could not write the inversion cache %s (%s); continuing without it", cache.path(key),
                           str(e)[:200])
    return Inverted(latents, cached=False, key=key, saved=saved)


# ---------------------------------------------------------------------------------------------- transfer

@dataclass
class TransferResult:
    frames: np.ndarray                        # (F, H, W, 3) uint8, one per prompt in `results` below
    prompt: str
    fps: float
    seed: int
    config: TransferConfig
    output_dir: Path | None
    timings: dict[str, float]
    counts: dict[str, int]
    history: SampleHistory
    inversion_cached: bool
    source: np.ndarray                        # the preprocessed source frames (F, H, W, 3) uint8
    record: dict = field(default_factory=dict)


def needs_inversion(config: TransferConfig) -> bool:
    guided = config.iterations > 0 and config.guidance_window[1] > config.guidance_window[0]
    return config.init in ("lf", "inverted") or guided


class SourceFeatures:
    """The source side of the guidance loss: per guided step i, the reduced features of the inverted latent of
    that step under the source prompt (one truncated pass each, counted in `counts`), computed once and shared by
    every target prompt."""

    def __init__(self, model: Backbone, hooks: FeatureHooks, config: TransferConfig, schedule: Schedule,
                 inverted: Inverted | None, cond: torch.Tensor, counts: dict):
        self.model, self.hooks, self.config, self.schedule, self.inverted, self.cond, self.counts = \
            model, hooks, config, schedule, inverted, cond, counts
        self._by_step: dict[int, dict[str, torch.Tensor]] = {}

    def __call__(self, i: int) -> dict[str, torch.Tensor]:
        if i not in self._by_step:
            with torch.no_grad():
                self.counts["unet_truncated_forward"] += 1
                feats = self.model.features(self.hooks, self.inverted.latents[i], self.schedule.timesteps[i],
                                            self.cond)
                self._by_step[i] = reduce_source(self.config.loss, feats)
        return self._by_step[i]


class TargetCalls:
    """The model as guided sampling calls it for one target prompt: `predict` (a CFG pass), `guidance(i)` (the
    motion loss of a latent at step i, Eq. 3, on a truncated pass) and `measure` (a CFG pass that also gives the
    loss after the step, from the same pass). Every pass is counted in `counts`; a CFG pass counts its batch."""

    def __init__(self, model: Backbone, hooks: FeatureHooks, config: TransferConfig, source: SourceFeatures,
                 cond: torch.Tensor, uncond: torch.Tensor, counts: dict):
        self.model, self.hooks, self.config, self.source = model, hooks, config, source
        self.timesteps = source.schedule.timesteps
        self.cond, self.uncond, self.counts = cond, uncond, counts
        self.weights = dict(zip(config.layers, config.layer_weights)) if config.layer_weights else None
        self.cfg_batch = 2 if config.guidance_scale != 1.0 else 1
        self.last_loss, self.last_loss_step = None, None      # the loss `measure` read last, and its step

    def predict(self, x: torch.Tensor, t: float) -> torch.Tensor:
        self.counts["unet_forward"] += self.cfg_batch
        return self.model.predict(x, t, self.cond, self.uncond, self.config.guidance_scale)

    def guidance(self, i: int):
        src, t = self.source(i), self.timesteps[i]

        def loss(x: torch.Tensor) -> torch.Tensor:
            self.counts["unet_truncated_forward"] += 1
            feats = self.model.features(self.hooks, x, t, self.cond)
            return motion_loss(self.config.loss, src, feats, self.weights)
        return loss

    def measure(self, x: torch.Tensor, i: int) -> tuple[torch.Tensor, float]:
        self.counts["unet_forward"] += self.cfg_batch
        out, feats = self.model.predict_observed(self.hooks, x, self.timesteps[i], self.cond, self.uncond,
                                                 self.config.guidance_scale)
        self.last_loss = float(motion_loss(self.config.loss, self.source(i), feats, self.weights))
        self.last_loss_step = i
        return out, self.last_loss


def start_latent(model: Backbone, source: Video, config: TransferConfig, inverted: Inverted | None,
                 schedule: Schedule, generator: torch.Generator) -> tuple[torch.Tensor, int]:
    """The initial latent (initialization.py) and the index of the sampling step it starts at (0 except for
    SDEdit)."""
    if config.init == "sdedit":
        x0 = encode_source(model, source.frames, config).float().cpu()
        return sdedit_latent(x0, schedule, config.sdedit_strength, generator)
    shape = model.latent_shape(config.frames, config.height, config.width)
    x_T = None if inverted is None else inverted.latents[0].cpu()
    return initial_latent(config.init, x_T, shape, generator, config.lf_factor, config.lf_filter), 0


def generate(model: Backbone, source: Video | None, prompts: list[str], config: TransferConfig, *,
             progress: bool = True, timer: Timer | None = None,
             on_progress: ProgressFn | None = None) -> list[TransferResult]:
    """The method on preprocessed frames, for one or more target prompts sharing inversion and source features.

    With `source=None` this is plain text-to-video (random init, no guidance): the baseline. Work shared by
    the prompts (encoding, inversion, source features) is timed and counted in the first prompt's record.
    """
    if source is None:
        if needs_inversion(config):
            raise ConfigError("plain text-to-video needs init='random' and no guidance")
        blank = np.zeros((config.frames, config.height, config.width, 3), np.uint8)
        source = Video(frames=blank, fps=model.defaults.fps, source="<none>")
    shared_timer, shared_counts = timer or Timer(), new_counts()
    schedule = model.schedule(config.steps)
    guided = guided_steps(config.steps, config.guidance_window) if config.iterations > 0 else []
    results = []
    # hooks first: a wrong layer name fails before the inversion is paid for
    with FeatureHooks(model.denoiser, config.layers, stop_early=True) as hooks:
        inverted = None
        if needs_inversion(config):
            inverted = invert_latents(model, source.frames, config, sorted(set(guided) | {0}),
                                      progress=progress, timer=shared_timer, counts=shared_counts,
                                      on_progress=on_progress)
        with shared_timer("text"):
            source_cond = model.encode_prompts([config.source_prompt])
            uncond = model.encode_prompts([config.negative_prompt])
        source_features = SourceFeatures(model, hooks, config, schedule, inverted, source_cond, shared_counts)
        for prompt in prompts:
            timer, counts = (shared_timer, shared_counts) if not results else (Timer(), new_counts())
            calls = TargetCalls(model, hooks, config, source_features, model.encode_prompts([prompt]), uncond, counts)
            generator = torch.Generator().manual_seed(config.seed)
            x_T, first = start_latent(model, source, config, inverted, schedule, generator)
            step = _sampling_progress(on_progress, calls, config.steps - first, len(results), len(prompts))
            mode = activation_mode(config, model)
            units = model.checkpoint_units() if mode == "checkpoint" else None
            with timer("sampling"), activation_options(model.denoiser, mode, names=units):
                x0, history = guided_sample(calls.predict, x_T.to(model.device), schedule,
                                            guidance=calls.guidance, guided=guided,
                                            iterations=config.iterations, learning_rate=config.learning_rate,
                                            restart=config.restart, generator=generator, progress=progress,
                                            first_step=first, measure=calls.measure,
                                            early_stop=config.early_stop, reuse_every=config.reuse_every,
                                            callback=step)
            counts["unet_backward"] += history.backward_passes
            check_finite(x0, model, history)
            with timer("decode"):
                frames = model.decode_latents(x0, quantize=config.quantize)
            results.append(TransferResult(frames=frames, prompt=prompt, fps=source.fps, seed=config.seed,
                                          config=config, output_dir=None, timings=timer.seconds, counts=counts,
                                          history=history, inversion_cached=bool(inverted and inverted.cached),
                                          source=source.frames))
    return results


def check_finite(x0: torch.Tensor, model: Backbone, history: SampleHistory) -> None:
    """A result latent holding NaN or infinity would decode to a black video: a one-line error instead, saying
    where it came from (the model's weights, or the guidance's numbers)."""
    if torch.isfinite(x0).all():
        return
    losses = [v for s in history.guided for v in s.losses]
    if losses and not all(math.isfinite(v) for v in losses):
        cause = "the guidance loss became NaN or infinite (lower --learning-rate or --guidance-scale)"
    else:
        cause = model_fault(model)
    raise ModelError(f"the result holds NaN or infinite values and would be a black video: {cause}")


def model_fault(model: Backbone) -> str:
    return (f"the model in {model.path} gives NaN or infinite outputs (damaged weights, or a dtype too narrow: "
            f"try --dtype fp32)")


def finite_or_none(value):
    """JSON has no NaN or infinity: such floats (also in nested lists and dicts) are written as null."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, (list, tuple)):
        return [finite_or_none(v) for v in value]
    if isinstance(value, dict):
        return {k: finite_or_none(v) for k, v in value.items()}
    return value


def _sampling_progress(on_progress: ProgressFn | None, calls: TargetCalls, total: int, index: int, count: int):
    """guided_sample's step callback as ProgressEvents, with the loss of the step's guidance (if guided)."""
    if on_progress is None:
        return None

    def step(i, t, x):
        loss = calls.last_loss if calls.last_loss_step == i else None
        on_progress(ProgressEvent("sampling", i + 1, total, index, count, loss))
    return step


def activation_mode(config: TransferConfig, model: Backbone) -> str:
    """auto: activation checkpointing on CUDA (the memory table in the README), nothing elsewhere."""
    if config.activations != "auto":
        return config.activations
    return "checkpoint" if model.device.type == "cuda" else "none"


def new_counts() -> dict[str, int]:
    """UNet work: full passes (a CFG pass counts its batch of 2), truncated passes, backward passes."""
    return {"unet_forward": 0, "unet_truncated_forward": 0, "unet_backward": 0}


def run_record(result: TransferResult, model: Backbone, video_source: str, fit: str = "") -> dict:
    return {
        "prompt": result.prompt, "source": video_source, "fit": fit, "seed": result.seed, "fps": result.fps,
        "config": result.config.to_dict(), "model": {"path": str(model.path), "identity": model.identity, "family": model.family},
        "device": str(model.device), "dtype": str(model.dtype), "versions": versions(),
        "timings_s": {k: round(v, 3) for k, v in result.timings.items()}, "counts": result.counts,
        "inversion_cached": result.inversion_cached,
        "guidance": [{"step": s.index, "t": s.t, "lr": s.lr, "loss_before": s.losses[0] if s.losses else None,
                      "loss_after": s.loss_after, "losses": s.losses, "iterations": s.iterations,
                      "reused": s.reused}
                     for s in result.history.guided],
        "unet_passes": {"sampling": result.history.unet_passes, "restarts": result.history.restarts},
    }


def write_outputs(directory: Path, result: TransferResult, record: dict, *,
                  extra: Callable[[Path], None] | None = None) -> None:
    """result.mp4, frames/, comparison.mp4, whatever `extra(folder)` adds, and run.json, written into a temporary
    folder that then takes `directory`'s place (`video.atomic_path`): a reader sees the earlier result or this
    one, whole, never a part or a mix. Call it under `result_folders`."""
    with atomic_path(directory, keep_suffix=False) as folder:
        try:
            folder.mkdir()
        except OSError as error:
            raise OutputError(f"Cannot write {directory}: {error.strerror or error}. Choose another --output-dir.") \
                from error
        write_video(folder / "result.mp4", result.frames, result.fps, min_size=PREVIEW_MIN_SIZE)
        write_frames(folder / "frames", result.frames, overwrite=True)
        write_video(folder / "comparison.mp4", side_by_side(result.source, result.frames), result.fps,
                    min_size=PREVIEW_MIN_SIZE)
        if extra is not None:
            extra(folder)
        atomic_write_text(folder / "run.json", json.dumps(finite_or_none(record), indent=2, allow_nan=False))


def transfer(video: str | Path | np.ndarray, prompt: str, *, output_dir: str | Path | None = None,
             overwrite: bool = False, quiet: bool = False, preset: str | None = None,
             config: str | Path | TransferConfig | None = None, fps: float | None = None,
             limits: InputLimits | None = None, on_progress: ProgressFn | None = None,
             **options) -> TransferResult:
    """Motion transfer: `video` (a path, or frames (F, H, W, 3) uint8) re-rendered as `prompt` describes.

    `options` are any `TransferConfig` fields (e.g. `steps=25, seed=0`). With `output_dir=None` the result is
    written under `outputs/<video>-<prompt>`; pass `output_dir=False` to write nothing. Several prompts on one
    video: `transfer_many`.
    """
    if not isinstance(prompt, str):
        raise TypeError(f"transfer takes one prompt (a str), got {type(prompt).__name__}; use transfer_many for "
                        f"several")
    return transfer_many(video, [prompt], output_dir=output_dir, overwrite=overwrite, quiet=quiet, preset=preset,
                         config=config, fps=fps, limits=limits, on_progress=on_progress, **options)[0]


def transfer_many(video: str | Path | np.ndarray, prompts: list[str], *, output_dir: str | Path | None = None,
                  overwrite: bool = False, quiet: bool = False, preset: str | None = None,
                  config: str | Path | TransferConfig | None = None, fps: float | None = None,
                  limits: InputLimits | None = None, on_progress: ProgressFn | None = None,
                  **options) -> list[TransferResult]:
    """`transfer` for several prompts on one video, in order: they share one inversion and the source features.

    With `output_dir` given and more than one prompt, each result goes to `output_dir/<prompt>`. `on_progress`
    is called with a `ProgressEvent` after every inversion and sampling step.
    """
    if isinstance(prompts, str):
        raise TypeError("transfer_many takes a list of prompts; use transfer for one")
    prompts = list(prompts)
    if not prompts or any(not isinstance(p, str) or not p.strip() for p in prompts):
        raise ConfigError("the prompt is empty; say what the new video should show, e.g. --prompt \"a red star\"")
    check_prompts(prompts)
    cfg, run, explicit = _config(preset, config, options)
    output_dir = run.get("output_dir", output_dir)
    overwrite = bool(run.get("overwrite", overwrite))
    check_source(video, cfg, fps)                 # cheap checks before the (possibly long) model load
    directories = []
    if output_dir is not False:
        names = prompt_folder_names(prompts)
        for p, name in zip(prompts, names):
            base = Path(output_dir) if output_dir else default_output_dir(video, p, name)
            directories.append(base if len(prompts) == 1 or output_dir is None else base / name)
    timer = Timer()
    with result_folders(directories, overwrite):
        with timer("load"):
            model = get_model(cfg)
        cfg = fill_from_model(cfg, model, explicit, preset)
        with timer("read"):
            source, cfg = read_source(video, cfg, model, explicit, fps, limits)
        results = generate(model, source, prompts, cfg, progress=not quiet, timer=timer, on_progress=on_progress)
        for i, result in enumerate(results):
            result.record = run_record(result, model, source.source, source.fit)
            if directories:
                result.output_dir = directories[i]
                write_outputs(directories[i], result, result.record)
    return results


MAX_PROMPTS = 100                # per run (each is a whole sampling run)


def check_prompts(prompts: list[str]) -> None:
    """Prompts a run takes: at most `MAX_PROMPTS`, each at most `MAX_PROMPT_CHARS` characters of text without
    NUL (a megabyte of text would hold the tokenizer for minutes and say nothing more)."""
    if len(prompts) > MAX_PROMPTS:
        raise ConfigError(f"{len(prompts)} prompts in one run; at most {MAX_PROMPTS} (use a batch jobs file)")
    for p in prompts:
        if not isinstance(p, str) or len(p) > MAX_PROMPT_CHARS or "\x00" in p:
            raise ConfigError(f"a prompt must be text of at most {MAX_PROMPT_CHARS} characters without NUL; got "
                              f"{short(p)} ({len(p) if isinstance(p, str) else type(p).__name__} characters)")


def text_to_video(prompt: str, *, quiet: bool = True, config: TransferConfig | None = None,
                  **options) -> TransferResult:
    """Plain generation from the prompt: random initial latent, no guidance, no source video (the baseline)."""
    if not prompt or not prompt.strip():
        raise ConfigError("the prompt is empty")
    check_prompts([prompt])
    cfg = (config or TransferConfig()).replace(**options, init="random", iterations=0)
    model = get_model(cfg)
    cfg = fill_from_model(cfg, model, set(options) | {"init", "iterations"})
    result = generate(model, None, [prompt], cfg, progress=not quiet)[0]
    result.record = run_record(result, model, "<none>")
    return result


@dataclass
class InversionResult:
    """Where `invert` left the inverted latents, and what it cost."""

    cache: Path                               # the cache file (safetensors)
    cached: bool                              # it was there already: nothing was computed
    steps: list[int]                          # the sampling step indices kept, ascending
    timings: dict[str, float]                 # seconds per phase
    unet_forward: int                         # UNet passes made (0 on a cache hit)


def invert(video: str | Path | np.ndarray, *, quiet: bool = False, preset: str | None = None,
           config: str | Path | TransferConfig | None = None, fps: float | None = None,
           limits: InputLimits | None = None, **options) -> InversionResult:
    """Fills the inversion cache for `video`; returns where it is and whether it was there already.

    Options that would do nothing here (`config.INVERT_IGNORES`, `use_cache=False`) are errors when given as
    keyword arguments (flags); a config file shared with `transfer` may hold them."""
    ignored = [k for k in INVERT_IGNORES if options.get(k) is not None]
    if ignored:
        raise ConfigError(f"invert only inverts the source into the cache; {', '.join(ignored)} would do nothing "
                          f"there: leave {'it' if len(ignored) == 1 else 'them'} out")
    if options.get("use_cache") is False:
        raise ConfigError("invert only fills the cache; --no-cache would make it do nothing")
    cfg, _, explicit = _config(preset, config, options)
    if cfg.vae_encode == "sample" and cfg.seed is None:
        raise ConfigError("with vae_encode: sample the inversion depends on the seed; pass --seed, the one the "
                          "transfers that should reuse this inversion will use")
    if options.get("seed") is not None and cfg.vae_encode != "sample":
        raise ConfigError("the inversion does not depend on the seed unless --vae-encode sample; --seed would do "
                          "nothing here: leave it out")
    check_source(video, cfg, fps)
    model = get_model(cfg)
    cfg = fill_from_model(cfg, model, explicit, preset)
    source, cfg = read_source(video, cfg, model, explicit, fps, limits)
    keep = sorted(set(guided_steps(cfg.steps, cfg.guidance_window)) | {0})
    timer = Timer()
    counts = new_counts()
    inverted = invert_latents(model, source.frames, cfg.replace(use_cache=True), keep, progress=not quiet,
                              timer=timer, counts=counts)
    if not (inverted.cached or inverted.saved):
        raise OutputError(f"could not write the inversion cache in {InversionCache(cfg.cache_dir).directory}; "
                          f"see the warning above, or pass another --cache-dir")
    return InversionResult(cache=InversionCache(cfg.cache_dir).path(inverted.key), cached=inverted.cached,
                           steps=keep, timings=timer.seconds, unet_forward=counts["unet_forward"])


def analyze(video: str | Path | np.ndarray, *, target: str = "smm", seeds: int | list[int] = 3,
            output_dir: str | Path | None = None, overwrite: bool = False, quiet: bool = False,
            preset: str | None = None, config: str | Path | TransferConfig | None = None,
            fps: float | None = None, limits: InputLimits | None = None, **options) -> list[TransferResult]:
    """Feature inversion (Eq. 1): regenerate the video from random noise with the source prompt, matching the
    source's full features (`target="features"`) or their SMM (`"smm"`), once per seed.

    Full features reproduce the video nearly exactly; SMM keeps layout and motion and lets appearance vary.
    """
    if target not in ("features", "smm"):
        raise ConfigError(f"--target must be features or smm, got {short(target)}")
    fixed = [k for k in ("init", "loss", "seed") if options.get(k) is not None]
    if fixed:
        raise ConfigError(f"analyze sets init=random, loss={target} and the seeds itself; {', '.join(fixed)} would "
                          f"do nothing (--target chooses the loss, --seeds the seeds)")
    cfg, run, explicit = _config(preset, config, {**options, "init": "random", "loss": target})
    check_source(video, cfg, fps)
    output_dir = Path(run.get("output_dir", output_dir) or default_output_dir(video, f"analyze-{target}"))
    overwrite = bool(run.get("overwrite", overwrite))
    seed_list = list(range(seeds)) if isinstance(seeds, int) else list(seeds)
    if len(set(seed_list)) != len(seed_list):
        raise ConfigError(f"--seeds repeats a seed: {seed_list[:10]}")
    directories = [output_dir / f"seed-{seed}" for seed in seed_list]
    results = []
    with result_folders(directories, overwrite):
        model = get_model(cfg)
        cfg = fill_from_model(cfg, model, explicit, preset)
        source, cfg = read_source(video, cfg, model, explicit, fps, limits)
        prompt = cfg.source_prompt
        for seed, directory in zip(seed_list, directories):
            result = generate(model, source, [prompt or ""], cfg.replace(seed=seed), progress=not quiet)[0]
            result.record = run_record(result, model, source.source, source.fit) | {"analysis": target}
            result.output_dir = directory
            write_outputs(directory, result, result.record)
            results.append(result)
    return results


def _config(preset, config, options) -> tuple[TransferConfig, dict, set[str]]:
    """The config, the run options, and which options were set explicitly (a TransferConfig object: those
    that differ from the defaults, and `options`)."""
    if isinstance(config, TransferConfig):
        base = TransferConfig().to_dict()
        explicit = {k for k, v in config.to_dict().items() if v != base[k]} | set(options)
        return config.replace(**options), {}, explicit
    cfg, run = resolve(preset, config, options)
    return cfg, run, explicit_keys(preset, config, options)


__all__ = ["transfer", "transfer_many", "invert", "analyze", "text_to_video", "environment", "generate",
           "result_folders", "write_outputs",
           "TransferResult", "InversionResult", "ProgressEvent", "ModelCache", "MODELS", "get_model"]
