"""Configuration: one frozen dataclass, three presets, YAML files and flags, validated in one place.

Resolution order, later wins: the dataclass defaults (ours), then a preset, then a YAML `--config` file, then
command-line flags or API keyword arguments. Fields left at `None` are filled from the model at run time
(`models.ModelDefaults`): its frame count, resolution and recommended negative prompt. A model's recommended
method options replace the defaults too, and the presets that stand for defaults (`DEFAULTS_PRESETS`), but never
what another preset, the file or a flag sets (`explicit_keys`).
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError

REFERENCE_NEGATIVE_PROMPT = "bad quality, distortions, unrealistic, distorted image, watermark, signature"

# The reference's three layers, all in `up_blocks.1` (a CrossAttnUpBlock3D): the residual branch of
# `resnets.1` before its skip-add (its `conv2` output), the temporal convolution after it, and the upsampler.
# The UNet3D family's default layers (`layers: None` takes the model family's own: `Backbone.default_layers`).
DEFAULT_LAYERS = ("up_blocks.1.resnets.1.conv2", "up_blocks.1.temp_convs.1", "up_blocks.1.upsamplers.0")

# Allowed values, one list each: validation, the command line's choices and the modules that act on them read
# these.
LOSSES = ("pairwise_cosine", "pairwise_l2", "smm", "features")       # losses.motion_loss
INITS = ("lf", "random", "inverted", "sdedit")                         # initialization
INVERSION_SOLVERS = ("euler", "midpoint")                              # schedules.FlowSchedule.inversion
LF_FILTERS = ("lowpass", "reference")                                  # initialization.upsample
VAE_ENCODINGS = ("mean", "sample")                                     # pipeline.encode_source
QUANTIZATIONS = ("round", "truncate")                                  # backbones.base.to_uint8
RESIZE_POLICIES = ("crop", "stretch", "pad")                           # video.resize_frames
DTYPES = ("auto", "fp32", "fp16", "bf16")                              # models.pick_dtype
ACTIVATION_MODES = ("none", "checkpoint", "offload")                   # activations.activation_options
ACTIVATIONS = ("auto",) + ACTIVATION_MODES                             # auto: checkpoint on CUDA, else none
# The options a model folder's `motiontransfer.json` may recommend (`method_defaults`): the method's own. Input
# selection, runtime and security options (where files go, what is cached, which weights may run code, the
# device, the seed) come from the user alone.
METHOD_OPTIONS = ("source_prompt", "guidance_scale", "steps", "inversion_steps", "inversion_solver", "restart",
                  "guidance_window",
                  "iterations", "early_stop", "reuse_every", "learning_rate", "layers", "layer_weights", "loss",
                  "init", "lf_factor", "lf_filter", "vae_encode", "sdedit_strength")
# What `invert` ignores (it only fills the inversion cache): given as flags or keyword arguments they are errors.
# (`seed` matters to it only with vae_encode: sample, which `pipeline.invert` checks.)
INVERT_IGNORES = ("guidance_scale", "negative_prompt", "restart", "iterations", "early_stop", "reuse_every",
                  "learning_rate", "layers", "layer_weights", "loss", "init", "lf_factor", "lf_filter",
                  "sdedit_strength", "activations", "quantize")
MAX_INVERSION_STEPS = 999    # DDIM's bound (1000 training timesteps); the flow family's grid takes as many
# Upper bounds of the numbers a flag, a config file, a jobs file or a model folder may set: far above any sane
# run, low enough that a typo or a hostile folder cannot make a run hang for days or allocate without bound.
UPPER_BOUNDS = {"frames": 1024, "stride": 10_000, "start": 10_000_000, "width": 8192, "height": 8192,
                "steps": 1000, "iterations": 1000, "reuse_every": 1000, "learning_rate": 10.0,
                "guidance_scale": 100.0, "lf_factor": 64, "layer_weights": 1e6}
MAX_PROMPT_CHARS = 2000      # a text encoder reads 77 (CLIP) to 512 (UMT5) tokens: far less than this
MAX_SEED = 2 ** 63 - 1       # what torch.Generator.manual_seed takes
DEVICE = re.compile(r"auto|cpu|cuda(:\d{1,3})?|mps")
MESSAGE_LIMIT = 300          # characters of a value quoted in an error message


@dataclass(frozen=True)
class InputLimits:
    """What an input may hold, checked from its header before anything is decoded (`video.read_video`).
    The defaults fit a long HD clip in a few GB; raise them with --max-frames, --max-frame-pixels,
    --max-total-pixels, --max-file-mb."""

    max_frames: int = 2000                        # frames read (after --start and --stride)
    max_frame_pixels: int = 36_000_000            # width x height of one frame (8K UHD is 33.2 M)
    max_total_pixels: int = 600_000_000           # frames read x pixels per frame (1.8 GB as uint8 RGB)
    max_file_mb: float = 4096.0                   # size of the file, or of all the images of a folder, in MB

    def __post_init__(self):
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise ConfigError(f"--{f.name.replace('_', '-')} must be a positive number, got {value!r}")


@dataclass(frozen=True)
class TransferConfig:
    """Every option of a transfer. Units in comments; `None` means "from the model"."""

    model: str | None = None                      # local folder or hub id; None: the shipped shapes model
    # input video
    frames: int | None = None                     # frames to use; None: the model's native count
    stride: int = 1                               # take every stride-th frame; output fps = source fps / stride
    start: int = 0                                # first frame (0-based, before striding)
    region: tuple[int, ...] | None = None         # (x, y, width, height) in source pixels, cut out before resizing
    resize: str = "crop"                          # crop | stretch | pad
    width: int | None = None                      # pixels; None: the model's
    height: int | None = None
    # prompts
    source_prompt: str = ""                       # describes the source video; used for inversion and its features
    negative_prompt: str | None = None            # None: the model's recommendation, else the reference's
                                                  # (--preset reference sets the reference's)
    guidance_scale: float = 10.0                  # classifier-free guidance scale
    # schedule
    steps: int = 25                               # DDIM sampling steps (the reference: 50; issue 14's study)
    inversion_steps: int | None = None            # None: = steps, so inverted latents sit on the sampling timesteps
    inversion_solver: str | None = None           # flow models: euler (one pass a step) | midpoint (two); None:
                                                  # the family's (DDIM inverts with DDIM, flow with euler)
    restart: bool = False                         # reference extra: re-noise to t after each step, denoise again
    # guidance (paper Sec. 4: optimise the latent at each guided step)
    guidance_window: tuple[float, float] = (0.0, 0.4)   # fractions of the sampling steps that are guided
    iterations: int = 10                          # Adam steps per guided timestep
    early_stop: float = 0.0                       # end a step's iterations, before the backward, once the loss
                                                  # fell by less than this fraction over the last one; 0: off
    reuse_every: int = 3                          # optimise every k-th guided step only (the first always); the
                                                  # others apply the last optimised change (sampling.py); 1: off
    learning_rate: tuple[float, float] = (0.007, 0.004)  # linear over the guided steps, first to last
    layers: tuple[str, ...] | None = None         # module names in the denoiser (named_modules); None: the model
                                                  # family's default (UNet3D: DEFAULT_LAYERS, the reference's)
    layer_weights: tuple[float, ...] | None = None  # one per layer; None: all 1
    loss: str = "pairwise_cosine"                 # pairwise_cosine (reference) | pairwise_l2 (paper) | smm | features
    # initialisation (paper Eq. 4)
    init: str = "lf"                              # lf | random | inverted | sdedit (a baseline)
    lf_factor: int = 4                            # spatial down-sampling factor of the low-pass filter
    lf_filter: str = "lowpass"                    # lowpass | reference (its antialiased up-sampling, shifted
                                                  # ~1/3 low-res pixel to the top-left; initialization.py)
    sdedit_strength: float = 0.6                  # init sdedit: noise the source to this fraction of T
    vae_encode: str = "mean"                      # x_0 of the source: the VAE posterior's mean (deterministic) |
                                                  # sample (the reference; drawn from the seed, so the inversion
                                                  # depends on the seed)
    # output
    quantize: str = "round"                       # decoded pixels to 8 bits: round (to the nearest level) |
                                                  # truncate (the reference's; --preset reference sets it)
    # runtime
    seed: int | None = None                       # None: drawn at run time, then recorded
    device: str = "auto"                          # auto (cuda, mps, cpu) | cpu | cuda | cuda:N | mps
    dtype: str = "auto"                           # auto (fp16 on cuda, fp32 elsewhere) | fp32 | fp16 | bf16
    allow_unsafe_weights: bool = False            # permit pickled .bin weights
    cache_dir: str | None = None                  # inversion cache; None: ~/.cache/motiontransfer
    use_cache: bool = True
    vae_slicing: bool = False                     # decode/encode one frame at a time
    activations: str = "auto"                     # what guidance keeps for backward: none | checkpoint | offload;
                                                  # auto: checkpoint on CUDA (ZeroScope at 24 frames in 16 GB)
    cpu_offload: bool = False                     # keep components on the CPU except while they run

    def __post_init__(self):
        for name in _TUPLE_FIELDS:                  # lists (YAML, API) become tuples; one layer may be a string
            object.__setattr__(self, name, _coerce(name, getattr(self, name)))
        for name in ("model", "cache_dir"):         # paths are recorded as strings (run.json, cache keys)
            if isinstance(getattr(self, name), os.PathLike):
                object.__setattr__(self, name, os.fspath(getattr(self, name)))
        validate(self)

    def replace(self, **changes) -> "TransferConfig":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return {f.name: _plain(getattr(self, f.name)) for f in fields(self)}


def _plain(value):
    return list(value) if isinstance(value, tuple) else value


def _has_type(value, annotation: str) -> bool:
    """Whether `value` fits a field annotation of this module ("int | None", "tuple[float, ...]"; ints are floats,
    bools are not numbers)."""
    if annotation.endswith(" | None"):
        return value is None or _has_type(value, annotation[:-len(" | None")])
    if annotation.startswith("tuple["):
        item = annotation[len("tuple["):-1].split(",")[0].strip()
        return isinstance(value, tuple) and all(_has_type(v, item) for v in value)
    if isinstance(value, bool):
        return annotation == "bool"
    return {"int": isinstance(value, int), "float": isinstance(value, (int, float)),
            "str": isinstance(value, str), "bool": False}.get(annotation, True)


def short(value: Any) -> str:
    """A repr of `value` bounded to about `MESSAGE_LIMIT` characters, however large or deep the value (a YAML
    alias bomb expands to gigabytes)."""
    import reprlib

    r = reprlib.Repr()
    r.maxlevel, r.maxlist, r.maxtuple, r.maxdict, r.maxstring, r.maxother = 3, 8, 8, 8, 80, 80
    text = r.repr(value)
    return text if len(text) <= MESSAGE_LIMIT else text[:MESSAGE_LIMIT] + "..."


def validate(c: TransferConfig) -> None:
    def need(ok: bool, message: str):
        if not ok:
            raise ConfigError(message if len(message) <= 2 * MESSAGE_LIMIT else message[:2 * MESSAGE_LIMIT] + "...")

    for f in fields(c):
        value = getattr(c, f.name)
        if not _has_type(value, f.type):
            need(False, f"option {f.name} must be {f.type}, got {short(value)} ({type(value).__name__})")
        numbers = value if isinstance(value, tuple) else (value,)
        need(all(math.isfinite(v) for v in numbers if isinstance(v, float)),
             f"--{f.name.replace('_', '-')} must be a finite number, got {short(value)}")
    for name, high in UPPER_BOUNDS.items():
        value = getattr(c, name)
        need(all(v <= high for v in (value if isinstance(value, tuple) else (value,)) if v is not None),
             f"--{name.replace('_', '-')} must be at most {high:g}, got {short(value)}")
    need(c.seed is None or 0 <= c.seed <= MAX_SEED, f"--seed must be in 0..{MAX_SEED}, got {short(c.seed)}")
    for name in ("source_prompt", "negative_prompt"):
        text = getattr(c, name)
        need(text is None or (len(text) <= MAX_PROMPT_CHARS and "\x00" not in text),
             f"--{name.replace('_', '-')} must be text of at most {MAX_PROMPT_CHARS} characters without NUL")
    need(DEVICE.fullmatch(c.device) is not None,
         f"--device must be auto, cpu, cuda, cuda:N or mps, got {short(c.device)}")
    need(c.frames is None or c.frames >= 2, f"--frames must be at least 2, got {c.frames}")
    need(c.stride >= 1, f"--stride must be at least 1, got {c.stride}")
    need(c.start >= 0, f"--start must be 0 or more, got {c.start}")
    need(c.region is None or (len(c.region) == 4 and c.region[0] >= 0 and c.region[1] >= 0
                              and c.region[2] >= 1 and c.region[3] >= 1),
         f"--region must be X,Y,WIDTH,HEIGHT with X, Y >= 0 and a positive size, got {c.region}")
    need(c.resize in RESIZE_POLICIES, f"--resize must be one of {', '.join(RESIZE_POLICIES)}, got {c.resize!r}")
    for name in ("width", "height"):
        v = getattr(c, name)
        need(v is None or (v >= 8 and v % 8 == 0), f"--{name} must be a multiple of 8, got {v}")
    need(c.steps >= 1, f"--steps must be at least 1, got {c.steps}")
    need(c.inversion_steps is None or c.inversion_steps >= c.steps,
         f"--inversion-steps ({c.inversion_steps}) must be at least --steps ({c.steps})")
    need(c.inversion_solver in (None,) + INVERSION_SOLVERS,
         f"--inversion-solver must be one of {', '.join(INVERSION_SOLVERS)}, got {short(c.inversion_solver)}")
    need(c.inversion_steps is None or c.inversion_steps <= MAX_INVERSION_STEPS,
         f"--inversion-steps must be at most {MAX_INVERSION_STEPS}")
    need(len(c.guidance_window) == 2, f"guidance window must be two fractions (start, end), got {c.guidance_window}")
    lo, hi = c.guidance_window
    need(0.0 <= lo <= hi <= 1.0, f"guidance window must satisfy 0 <= start <= end <= 1, got {c.guidance_window}")
    need(c.iterations >= 0, f"--iterations must be 0 or more, got {c.iterations}")
    need(0.0 <= c.early_stop < 1.0, f"--early-stop must be a fraction in [0, 1) (0: off), got {c.early_stop}")
    need(c.reuse_every >= 1, f"--reuse-every must be 1 (off) or more, got {c.reuse_every}")
    need(len(c.learning_rate) == 2 and all(lr > 0 for lr in c.learning_rate),
         f"learning_rate must be two positive numbers (first, last), got {c.learning_rate}")
    need(c.layers is None or len(c.layers) >= 1, "at least one layer is needed for guidance")
    need(c.layer_weights is None or c.layers is None or len(c.layer_weights) == len(c.layers),
         f"layer_weights has {0 if c.layer_weights is None else len(c.layer_weights)} entries for "
         f"{len(c.layers or ())} layers")
    need(c.loss in LOSSES, f"--loss must be one of {', '.join(LOSSES)}, got {c.loss!r}")
    need(c.init in INITS, f"--init must be one of {', '.join(INITS)}, got {c.init!r}")
    need(c.lf_factor >= 1, f"lf_factor must be at least 1, got {c.lf_factor}")
    need(c.lf_filter in LF_FILTERS, f"--lf-filter must be one of {', '.join(LF_FILTERS)}, got {c.lf_filter!r}")
    need(c.vae_encode in VAE_ENCODINGS,
         f"--vae-encode must be one of {', '.join(VAE_ENCODINGS)}, got {c.vae_encode!r}")
    need(c.quantize in QUANTIZATIONS, f"--quantize must be one of {', '.join(QUANTIZATIONS)}, got {c.quantize!r}")
    need(0.0 < c.sdedit_strength <= 1.0, f"sdedit_strength must be in (0, 1], got {c.sdedit_strength}")
    need(c.dtype in DTYPES, f"--dtype must be one of {', '.join(DTYPES)}, got {c.dtype!r}")
    need(c.activations in ACTIVATIONS, f"--activations must be one of {', '.join(ACTIVATIONS)}, got {c.activations!r}")
    need(c.guidance_scale >= 0, f"--guidance-scale must be 0 or more, got {c.guidance_scale}")


PRESETS: dict[str, dict[str, Any]] = {
    # Ours (issue 14's study, benchmarks/init_sweep.py on validation pairs): 25 steps, inverted on the sampling
    # schedule itself (25 UNet passes instead of 999), no restart; of the 10 guided steps every third is
    # optimised (4 x 10 Adam iterations) and the others reuse its change of the latent.
    "default": {},
    # The default recipe before issue 14's cheaper guidance (50 steps, all 20 guided steps optimised), every
    # method option spelt out. Like the defaults, it yields to what a model folder recommends
    # (`DEFAULTS_PRESETS`): `--preset previous` runs what a plain run ran before.
    "previous": {"steps": 50, "inversion_steps": None, "restart": False, "guidance_window": (0.0, 0.4),
                 "iterations": 10, "early_stop": 0.0, "reuse_every": 1, "learning_rate": (0.007, 0.004),
                 "layers": None, "layer_weights": None, "loss": "pairwise_cosine", "init": "lf",
                 "lf_factor": 4, "lf_filter": "lowpass", "vae_encode": "mean", "negative_prompt": None,
                 "guidance_scale": 10.0},
    # The public reference recipe: 999-step inversion of a VAE posterior sample, restart after every step, its
    # LF up-sampling, its negative prompt whatever the model recommends, and its 8-bit conversion (truncation).
    # What still differs, and by how much: the README's "Where this differs from the reference implementation".
    "reference": {"inversion_steps": 999, "restart": True, "steps": 50, "guidance_window": (0.0, 0.4),
                  "iterations": 10, "early_stop": 0.0, "reuse_every": 1, "learning_rate": (0.007, 0.004),
                  "layers": DEFAULT_LAYERS, "loss": "pairwise_cosine", "init": "lf", "lf_factor": 4, "lf_filter": "reference",
                  "vae_encode": "sample", "negative_prompt": REFERENCE_NEGATIVE_PROMPT, "guidance_scale": 10.0,
                  "quantize": "truncate"},
}

# Presets that stand for a version of the defaults: a model's recommended method options (`motiontransfer.json`'s
# `method_defaults`) apply over them as over the dataclass defaults. The values of the other presets (reference)
# are explicit and win over a model's.
DEFAULTS_PRESETS = ("default", "previous")

_TUPLE_FIELDS = {"guidance_window", "learning_rate", "layers", "layer_weights", "region"}
RUN_KEYS = {"output_dir", "overwrite"}   # run options a YAML file may also set
MAX_CONFIG_BYTES = 1_000_000             # a config file is a few lines; anything larger is refused unread


def _coerce(name: str, value):
    if name in _TUPLE_FIELDS:
        if isinstance(value, str):
            return (value,)
        if isinstance(value, list):
            return tuple(value)
    return value


def read_small_text(path: str | Path, limit: int, what: str, error: type[Exception] = ConfigError) -> str:
    """The text of a small file a run reads (a config, a jobs file, a model folder's JSON), read without trusting
    its size: it must be a regular file (a symlink is followed; a device, a pipe or a folder is refused), and at
    most `limit` bytes are read, the file refused when it holds more. `error(message)` for every refusal."""
    import stat

    path = Path(path)
    try:
        with open(path, "rb") as handle:
            if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
                raise error(f"{what} {path} is not a regular file (a device, a pipe or a folder?)")
            data = handle.read(limit + 1)
    except FileNotFoundError:
        raise error(f"{what} {path} does not exist") from None
    except IsADirectoryError:
        raise error(f"{what} {path} is a folder; pass a file") from None
    except OSError as e:
        raise error(f"{what} {path} cannot be read: {e.strerror or e}") from None
    if len(data) > limit:
        raise error(f"{what} {path} is over {limit // 1000} kB; is it the right file?")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise error(f"{what} {path} is not text (a binary file?)") from None


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"config file {path} is a folder; pass a YAML file")
    try:
        data = yaml.safe_load(read_small_text(path, MAX_CONFIG_BYTES, "config file")) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {path} is not valid YAML: {short(str(e))}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of option: value")
    known = {f.name for f in fields(TransferConfig)} | RUN_KEYS | {"preset"}
    unknown = sorted(map(str, set(data) - known))
    if unknown:
        raise ConfigError(f"unknown key(s) in {path}: {short(', '.join(unknown))}")
    return data


def explicit_keys(preset: str | None = None, config_file: str | Path | None = None,
                  overrides: dict[str, Any] | None = None) -> set[str]:
    """The options that the preset, the YAML file or the overrides set: a model's recommendations
    (`ModelDefaults.method`) never replace these."""
    file_values = read_yaml(config_file) if config_file else {}
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    preset = overrides.get("preset") or preset or file_values.get("preset") or "default"
    from_preset = set() if preset in DEFAULTS_PRESETS else set(PRESETS.get(preset, {}))
    return (from_preset | set(file_values) | set(overrides)) - {"preset"} - RUN_KEYS


def resolve(preset: str | None = None, config_file: str | Path | None = None,
            overrides: dict[str, Any] | None = None) -> tuple[TransferConfig, dict[str, Any]]:
    """Builds the config: defaults < preset < YAML file < overrides (None values in overrides are ignored).

    Returns the config and the run options (`output_dir`, `overwrite`) that the file or overrides set.
    """
    file_values = read_yaml(config_file) if config_file else {}
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    preset = overrides.pop("preset", None) or preset or file_values.pop("preset", None) or "default"
    file_values.pop("preset", None)
    if not isinstance(preset, str) or preset not in PRESETS:
        raise ConfigError(f"unknown preset {short(preset)}; choose one of {', '.join(PRESETS)}")
    merged: dict[str, Any] = dict(PRESETS[preset])
    merged.update(file_values)
    merged.update(overrides)
    known = {f.name for f in fields(TransferConfig)}
    unknown = sorted(map(str, set(merged) - known - RUN_KEYS))
    if unknown:
        raise ConfigError(f"unknown option(s): {short(', '.join(unknown))}")
    run = {k: merged.pop(k) for k in list(merged) if k in RUN_KEYS}
    if not isinstance(run.get("overwrite", False), bool):      # "no" in a YAML file is a string, and truthy
        raise ConfigError(f"overwrite must be true or false, got {short(run['overwrite'])}")
    if not isinstance(run.get("output_dir", ""), (str, os.PathLike)) or isinstance(run.get("output_dir"), bool):
        raise ConfigError(f"output_dir must be a folder path, got {short(run['output_dir'])}")
    try:
        config = TransferConfig(**{k: _coerce(k, v) for k, v in merged.items()})
    except TypeError as e:
        raise ConfigError(f"invalid option: {short(str(e))}") from None
    return config, run


__all__ = ["TransferConfig", "InputLimits", "PRESETS", "DEFAULT_LAYERS", "REFERENCE_NEGATIVE_PROMPT", "resolve", "read_yaml"]
