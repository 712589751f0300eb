"""Model loading: a model folder or hub id in, the backbone of its family out (`backbones/`).

`load_model` reads any diffusers-format text-to-video checkpoint of a supported family from a local folder or a
hub id: the UNet3D family (`UNet3DConditionModel`, `AutoencoderKL`, `CLIPTextModel` + `CLIPTokenizer`, a DDIM
scheduler config: the folder layout of `cerspense/zeroscope_v2_576w` and `damo-vilab/text-to-video-ms-1.7b`).
The family is read from the folder's `model_index.json` (`backbones.family_of`); the backbone it returns is the
only place that knows that family's call convention (`backbones.base`). This module keeps what every family
shares: locating the folder, its identity, and what it recommends (`motiontransfer.json`).
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import replace
from importlib import resources
from pathlib import Path

import torch

from .backbones import Backbone, all_components, family_module
from .backbones.base import DEFAULT_FPS, ModelDefaults, check_bounds, read_json
from .backbones.unet3d import DEFAULT_FRAMES, KNOWN_SIZES
from .errors import ConfigError, ModelError

logger = logging.getLogger(__name__)

# The default checkpoint: the shipped shapes model, found as package data (no import of the shapes wing).
SHIPPED_MODEL = "shapes/weights/model"          # under the package


def shipped_model_path() -> Path:
    return Path(str(resources.files("motiontransfer"))) / SHIPPED_MODEL


def pick_device(device: str = "auto") -> torch.device:
    """`auto`: CUDA, else MPS, else the CPU; a device asked for must be there (a one-line ConfigError)."""
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"--device {device}: this machine has no CUDA device (torch {torch.__version__}); leave "
                          f"--device out or pass --device cpu")
    if device.startswith("cuda") and ":" in device and int(device.split(":")[1]) >= torch.cuda.device_count():
        raise ConfigError(f"--device {device}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    if device == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ConfigError("--device mps: this machine has no MPS device; leave --device out or pass --device cpu")
    if device != "auto":
        return torch.device(device)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def pick_dtype(dtype: str, device: torch.device) -> torch.dtype:
    if dtype == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    return {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[dtype]


# ------------------------------------------------------------------------------------------------ locating

def resolve_model_path(model: str | None) -> Path:
    """A local folder as it is; a hub id through the local hub cache, or a download when online."""
    if model is None:
        path = shipped_model_path()
        if not path.exists():
            raise ModelError(f"the shipped model is missing from {path}; reinstall motiontransfer or pass --model")
        return path
    path = Path(model).expanduser()
    if path.exists():
        return path
    if model.count("/") != 1 or model.startswith((".", "/", "~")):
        raise ModelError(f"model folder {model} does not exist; pass --model with a diffusers-format folder "
                         f"(unet/, vae/, text_encoder/, tokenizer/, scheduler/) or a hub id like owner/name")
    from huggingface_hub import snapshot_download

    components = all_components()
    patterns = [f"{c}/*.json" for c in components] + [f"{c}/*.safetensors" for c in components] + \
        ["tokenizer/*.txt", "tokenizer/*.model", "model_index.json", "motiontransfer.json"]
    try:
        return Path(snapshot_download(model, local_files_only=True, allow_patterns=patterns))
    except Exception:
        pass
    try:
        return Path(snapshot_download(model, allow_patterns=patterns))
    except Exception as e:
        raise ModelError(
            f"cannot fetch model {model!r} from the hub ({type(e).__name__}); this machine may be offline. "
            f"Download it elsewhere (e.g. `huggingface-cli download {model} --local-dir DIR`) and pass "
            f"--model DIR") from None


def model_identity(path: Path) -> str:
    """A short hash naming the weights: component configs, weight file names and sizes, and each weight
    file's first MiB (its safetensors header and first tensors). Stable across copies of the folder."""
    h = hashlib.sha256()
    for c in family_module(path).COMPONENTS:         # regular files of sane size: the family's check_folder
        for f in sorted((path / c).glob("*")):
            if f.suffix == ".json" or f.suffix == ".txt":
                h.update(f.name.encode())
                h.update(f.read_bytes())
            elif f.suffix in (".safetensors", ".bin"):
                h.update(f"{f.name}:{f.stat().st_size}".encode())
                with open(f, "rb") as fh:
                    h.update(fh.read(1 << 20))
    return h.hexdigest()[:16]


def read_defaults(path: Path) -> ModelDefaults:
    """What the checkpoint in `path` recommends: its `motiontransfer.json`, else its family's native size; the
    family's method recommendations (`METHOD_DEFAULTS`) under the folder's own."""
    family = family_module(path)
    defaults = _folder_defaults(path, family)
    method = {**family.METHOD_DEFAULTS, **(defaults.method or {})}
    return replace(defaults, method=method or None)


def _folder_defaults(path: Path, family) -> ModelDefaults:
    extra = path / "motiontransfer.json"
    if extra.exists():
        try:
            data = read_json(extra)
            defaults = ModelDefaults(width=int(data["width"]), height=int(data["height"]),
                                     frames=int(data["frames"]), fps=float(data.get("fps", DEFAULT_FPS)),
                                     negative_prompt=data.get("negative_prompt"),
                                     method=data.get("method_defaults") or None,
                                     vocabulary=tuple(data["vocabulary"]) if data.get("vocabulary") else None)
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise ModelError(f"{extra} is not a valid model recommendation ({type(e).__name__}: "
                             f"{str(e)[:100]})") from None
        check_bounds(extra, {"width": (defaults.width, 8, 8192), "height": (defaults.height, 8, 8192),
                             "frames": (defaults.frames, 1, 1024)})
        if not (0 < defaults.fps <= 1000) or (defaults.method is not None and not isinstance(defaults.method, dict)):
            raise ModelError(f"{extra}: fps must be in (0, 1000] and method_defaults a mapping")
        return defaults
    return family.native_defaults(path)


def model_defaults(model: str | None = None) -> ModelDefaults:
    """What a checkpoint recommends (`read_defaults`), read from its folder without loading the weights."""
    return read_defaults(resolve_model_path(model))


def load_model(model: str | None = None, *, device: str = "auto", dtype: str = "auto",
               allow_unsafe_weights: bool = False, vae_slicing: bool = False) -> Backbone:
    """Loads the components of a diffusers-format text-to-video checkpoint, frozen and in eval mode, behind the
    backbone of its family."""
    path = resolve_model_path(model)
    family = family_module(path)
    dev = pick_device(device)
    torch_dtype = pick_dtype(dtype, dev)
    safe = family.check_folder(path, allow_unsafe_weights)
    family.check_configs(path, torch_dtype)
    defaults = read_defaults(path)
    backbone = family.load(path, safe=safe, device=dev, dtype=torch_dtype, identity=model_identity(path),
                           defaults=defaults)
    backbone.vae_slicing = vae_slicing
    logger.info("loaded %s (%s, %s) on %s in %s", path, backbone.identity, backbone.family, dev, torch_dtype)
    return backbone


__all__ = ["load_model", "model_defaults", "resolve_model_path", "model_identity", "read_defaults",
           "shipped_model_path", "pick_device", "pick_dtype", "ModelDefaults", "DEFAULT_FRAMES", "KNOWN_SIZES"]
