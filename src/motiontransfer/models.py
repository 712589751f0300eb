"""Model loading and the one adapter over the diffusers/transformers components.

`load_model` reads any diffusers-format text-to-video checkpoint made of `UNet3DConditionModel`,
`AutoencoderKL`, `CLIPTextModel` + `CLIPTokenizer` and a scheduler config (the folder layout of
`cerspense/zeroscope_v2_576w` and `damo-vilab/text-to-video-ms-1.7b`), from a local folder or a hub id.

`TextToVideo` is the only place that knows the diffusers call convention, the latent layout (B, C, F, h, w),
the VAE scaling and the classifier-free-guidance batch order ([unconditional, conditional]). Everything else in
the package works on latents and callables.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError

from .config import REFERENCE_NEGATIVE_PROMPT
from .errors import ModelError
from .features import FeatureHooks

logger = logging.getLogger(__name__)

COMPONENTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
# The default checkpoint: the shipped shapes model, found as package data (no import of the shapes wing).
SHIPPED_MODEL = "shapes/weights/model"          # under the package
# Native sizes of known checkpoints whose UNet config cannot tell them (non-square): (width, height, frames).
KNOWN_SIZES = {"zeroscope_v2_576w": (576, 320, 24), "zeroscope_v2_xl": (1024, 576, 24),
               "text-to-video-ms-1.7b": (256, 256, 16)}
DEFAULT_FRAMES = 24          # ZeroScope's; used when neither the checkpoint nor the table says
DEFAULT_FPS = 8.0            # output fps when the input has none (image folders)


@dataclass(frozen=True)
class ModelDefaults:
    """What a checkpoint recommends; `motiontransfer.json` in its folder may set any of these."""

    width: int
    height: int
    frames: int
    fps: float = DEFAULT_FPS
    negative_prompt: str | None = None     # None: the reference's negative prompt
    method: dict | None = None             # TransferConfig fields the model recommends (e.g. its own init)
    vocabulary: tuple[str, ...] | None = None   # the words a small model was trained on; None: open vocabulary


def shipped_model_path() -> Path:
    return Path(str(resources.files("motiontransfer"))) / SHIPPED_MODEL


def pick_device(device: str = "auto") -> torch.device:
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

    patterns = [f"{c}/*.json" for c in COMPONENTS] + [f"{c}/*.safetensors" for c in COMPONENTS] + \
        ["tokenizer/*.txt", "model_index.json", "motiontransfer.json"]
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


def check_model_folder(path: Path, allow_unsafe: bool) -> dict[str, bool]:
    """Checks every component is present; returns, per weight component, whether it has safetensors."""
    missing = [c for c in COMPONENTS if not (path / c).is_dir()]
    if missing:
        raise ModelError(f"model folder {path} is incomplete: missing {', '.join(m + '/' for m in missing)}; "
                         f"a text-to-video checkpoint needs {', '.join(c + '/' for c in COMPONENTS)}")
    safe = {}
    for c in ("unet", "vae", "text_encoder"):
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
    if not any((path / "tokenizer").glob("*.json")):
        raise ModelError(f"model folder {path} is incomplete: tokenizer/ has no vocabulary")
    return safe


def model_identity(path: Path) -> str:
    """A short hash naming the weights: component configs, weight file names and sizes, and each weight
    file's first MiB (its safetensors header and first tensors). Stable across copies of the folder."""
    h = hashlib.sha256()
    for c in COMPONENTS:
        for f in sorted((path / c).glob("*")):
            if f.suffix == ".json" or f.suffix == ".txt":
                h.update(f.name.encode())
                h.update(f.read_bytes())
            elif f.suffix in (".safetensors", ".bin"):
                h.update(f"{f.name}:{f.stat().st_size}".encode())
                with open(f, "rb") as fh:
                    h.update(fh.read(1 << 20))
    return h.hexdigest()[:16]


def unknown_words(prompt: str, vocabulary: tuple[str, ...] | None) -> list[str]:
    """The distinct words of `prompt` (lowercase, split at anything but letters and digits) that are not in
    `vocabulary`, in order of appearance; none when the vocabulary is None (an open-vocabulary model)."""
    if vocabulary is None:
        return []
    known = set(vocabulary)
    words = "".join(ch if ch.isalnum() else " " for ch in prompt.lower()).split()
    return list(dict.fromkeys(w for w in words if w not in known))


def read_defaults(path: Path, unet_config, vae_config) -> ModelDefaults:
    extra = path / "motiontransfer.json"
    if extra.exists():
        try:
            data = _read_json(extra)
            defaults = ModelDefaults(width=int(data["width"]), height=int(data["height"]),
                                     frames=int(data["frames"]), fps=float(data.get("fps", DEFAULT_FPS)),
                                     negative_prompt=data.get("negative_prompt"),
                                     method=data.get("method_defaults") or None,
                                     vocabulary=tuple(data["vocabulary"]) if data.get("vocabulary") else None)
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise ModelError(f"{extra} is not a valid model recommendation ({type(e).__name__}: "
                             f"{str(e)[:100]})") from None
        _check_bounds(extra, {"width": (defaults.width, 8, 8192), "height": (defaults.height, 8, 8192),
                              "frames": (defaults.frames, 1, 1024)})
        if not (0 < defaults.fps <= 1000) or (defaults.method is not None and not isinstance(defaults.method, dict)):
            raise ModelError(f"{extra}: fps must be in (0, 1000] and method_defaults a mapping")
        return defaults
    for key, (w, h, f) in KNOWN_SIZES.items():
        if key in path.name or key in path.parent.parent.name:      # a folder, or a hub cache snapshot
            return ModelDefaults(width=w, height=h, frames=f)
    scale = 2 ** (len(vae_config.block_out_channels) - 1)
    size = unet_config.sample_size
    size = size[0] if isinstance(size, (list, tuple)) else size
    side = int(size or 32) * scale
    return ModelDefaults(width=side, height=side, frames=DEFAULT_FRAMES)


MAX_CONFIG_JSON_BYTES = 1_000_000      # a component's config.json is a few kB


def _read_json(path: Path) -> dict:
    """A small JSON object from a model folder; ModelError when it is large, unreadable or not an object."""
    try:
        if path.stat().st_size > MAX_CONFIG_JSON_BYTES:
            raise ModelError(f"{path} is over {MAX_CONFIG_JSON_BYTES // 1000} kB; a model config is a few kB")
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ModelError(f"cannot read {path} ({type(e).__name__}); the model folder is damaged") from None
    if not isinstance(data, dict):
        raise ModelError(f"{path} must hold a JSON object")
    return data


def _check_bounds(source: Path, values: dict[str, tuple]) -> None:
    """Each value (value, low, high) must be an int within [low, high]; a one-line ModelError names the field."""
    for name, (value, low, high) in values.items():
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise ModelError(f"{source}: {name} = {str(value)[:40]} is outside the sane range {low}..{high}; "
                             f"the model folder is damaged or not a text-to-video checkpoint")


def check_model_configs(path: Path, torch_dtype: torch.dtype = torch.float32) -> int:
    """Sanity-check the UNet, VAE and text-encoder configs before anything is allocated: every size field in a
    sane range, and the weights' estimated size within this machine's memory. Returns the estimate in bytes;
    raises a one-line ModelError naming the field otherwise."""
    unet, vae, text = (_read_json(path / c / "config.json") for c in ("unet", "vae", "text_encoder"))

    def ints(config: dict, name: str) -> list:
        value = config.get(name)
        return list(value) if isinstance(value, (list, tuple)) else [value]

    for label, config, low_lpb in (("unet", unet, 1), ("vae", vae, 1)):
        source = path / label / "config.json"
        channels = ints(config, "block_out_channels")
        if not 1 <= len(channels) <= 8:
            raise ModelError(f"{source}: block_out_channels has {len(channels)} entries; 1 to 8 expected")
        _check_bounds(source, {f"block_out_channels[{i}]": (c, 1, 8192) for i, c in enumerate(channels)})
        _check_bounds(source, {name: (v, 1, 64) for name in ("in_channels", "out_channels", "latent_channels")
                               if (v := config.get(name)) is not None})
        _check_bounds(source, {"layers_per_block": (config.get("layers_per_block", 2), low_lpb, 16)})
        sizes = ints(config, "sample_size")
        _check_bounds(source, {"sample_size": (s, 1, 2048) for s in sizes if s is not None})
    source = path / "unet" / "config.json"
    _check_bounds(source, {"cross_attention_dim": (v, 1, 16384) for v in ints(unet, "cross_attention_dim")
                           if v is not None})
    source = path / "text_encoder" / "config.json"
    text_fields = {"hidden_size": (text.get("hidden_size", 512), 1, 16384),
                   "intermediate_size": (text.get("intermediate_size", 2048), 1, 65536),
                   "num_hidden_layers": (text.get("num_hidden_layers", 12), 1, 128),
                   "vocab_size": (text.get("vocab_size", 49408), 1, 1_000_000),
                   "max_position_embeddings": (text.get("max_position_embeddings", 77), 1, 16384)}
    _check_bounds(source, text_fields)
    # parameters, roughly (resnets, temporal convolutions and attention per level; encoder and decoder)
    unet_params = 120 * (unet.get("layers_per_block", 2) + 1) * sum(c * c for c in ints(unet, "block_out_channels"))
    vae_params = 60 * (vae.get("layers_per_block", 1) + 1) * sum(c * c for c in ints(vae, "block_out_channels"))
    h, m, n, v, p = (text_fields[k][0] for k in text_fields)
    text_params = (v + p) * h + n * (4 * h * h + 2 * h * m)
    estimate = (unet_params + vae_params + text_params) * torch.tensor([], dtype=torch_dtype).element_size()
    memory = _physical_memory()
    if memory and estimate > memory:
        raise ModelError(f"{path}: its configs describe about {estimate / 1e9:.0f} GB of weights, more than this "
                         f"machine's {memory / 1e9:.0f} GB of memory (unet/vae block_out_channels, text_encoder "
                         f"hidden_size); the model folder is damaged or too large for this machine")
    return estimate


def _physical_memory() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def model_defaults(model: str | None = None) -> ModelDefaults:
    """What a checkpoint recommends (`read_defaults`), read from its folder without loading the weights."""
    from types import SimpleNamespace

    path = resolve_model_path(model)
    unet, vae = (SimpleNamespace(**_read_json(path / c / "config.json")) for c in ("unet", "vae"))
    return read_defaults(path, unet, vae)


# ------------------------------------------------------------------------------------------------- adapter

@dataclass
class TextToVideo:
    """The frozen components and the one adapter over them. Latents are (B, C, F, h, w), scaled."""

    unet: torch.nn.Module
    vae: torch.nn.Module
    text_encoder: torch.nn.Module
    tokenizer: object
    scheduler_config: dict
    path: Path
    identity: str
    defaults: ModelDefaults
    device: torch.device
    dtype: torch.dtype
    vae_slicing: bool = False
    cpu_offload: bool = False      # text encoder and VAE live on the CPU and visit the device only to run
    _warned_prompts: set = field(default_factory=set, repr=False)   # prompts already warned about (check_words)

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
        self.text_encoder.to(target)
        self.vae.to(target)

    @property
    def vae_scale(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def scaling_factor(self) -> float:
        return float(self.vae.config.scaling_factor)

    def _channel_stats(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The VAE config's per-channel `latents_mean` / `latents_std` as (1, C, 1, 1), or None when unset."""
        mean, std = (getattr(self.vae.config, k, None) for k in ("latents_mean", "latents_std"))
        if mean is None or std is None:
            return None
        return tuple(torch.tensor(v, device=like.device, dtype=like.dtype).view(1, -1, 1, 1) for v in (mean, std))

    # text ------------------------------------------------------------------------------------------
    def check_words(self, prompt: str) -> list[str]:
        """The words of `prompt` outside the model's vocabulary (when it declares one), warned about once."""
        unknown = unknown_words(prompt, self.defaults.vocabulary)
        if unknown and prompt not in self._warned_prompts:
            self._warned_prompts.add(prompt)
            shown = ", ".join(repr(w[:30]) for w in unknown[:8]) + (" ..." if len(unknown) > 8 else "")
            logger.warning("the model does not know %s (it splits unknown words into letters and ignores their "
                           "meaning); the words it knows: %s", shown, ", ".join(self.defaults.vocabulary))
        return unknown

    @torch.no_grad()
    def encode_prompts(self, prompts: list[str]) -> torch.Tensor:
        """(B, T, D) text embeddings, padded to the tokenizer's model_max_length as in training."""
        for prompt in prompts:
            if prompt != REFERENCE_NEGATIVE_PROMPT:      # ours (--preset reference), not the user's words
                self.check_words(prompt)
        tokens = self.tokenizer(prompts, padding="max_length", max_length=self.tokenizer.model_max_length,
                                truncation=True, return_tensors="pt")
        with self._running(self.text_encoder) as encoder:
            hidden = encoder(tokens.input_ids.to(self.device)).last_hidden_state
        return hidden.to(self.dtype)

    # pixels <-> latents ----------------------------------------------------------------------------
    @torch.no_grad()
    def encode_frames(self, frames: np.ndarray, generator: torch.Generator | None = None) -> torch.Tensor:
        """(F, H, W, 3) uint8 -> (1, C, F, h, w), times the scaling factor: the posterior mean (deterministic), or
        with a CPU `generator` a posterior sample mean + std * eps, eps (F, C, h, w) drawn from it in one call
        (so `vae_slicing` draws the same sample)."""
        x = torch.from_numpy(np.ascontiguousarray(frames)).to(self.device)
        x = x.permute(0, 3, 1, 2).to(self.dtype).div(127.5).sub(1.0)            # (F, 3, H, W) in [-1, 1]
        chunk = 1 if self.vae_slicing else len(x)
        with self._running(self.vae) as vae:
            posteriors = [vae.encode(x[i:i + chunk]).latent_dist for i in range(0, len(x), chunk)]
        z = torch.cat([p.mean for p in posteriors])                               # (F, C, h, w)
        if generator is not None:
            eps = torch.randn(z.shape, generator=generator, dtype=torch.float32).to(z.device, z.dtype)
            z = z + torch.cat([p.std for p in posteriors]) * eps
        stats = self._channel_stats(z)
        if stats is not None:                          # diffusers' convention (SDXL): (z - mean) * s / std
            z = (z - stats[0]) / stats[1]
        # contiguous: kernels round differently on other strides, and cached latents come back contiguous
        return (z * self.scaling_factor).permute(1, 0, 2, 3).unsqueeze(0).contiguous()   # (1, C, F, h, w)

    @torch.no_grad()
    def decode_latents(self, latents: torch.Tensor) -> np.ndarray:
        """(1, C, F, h, w) -> (F, H, W, 3) uint8."""
        z = latents[0].permute(1, 0, 2, 3).to(self.dtype) / self.scaling_factor  # (F, C, h, w)
        stats = self._channel_stats(z)
        if stats is not None:
            z = z * stats[1] + stats[0]
        chunk = 1 if self.vae_slicing else len(z)
        with self._running(self.vae) as vae:
            x = torch.cat([vae.decode(z[i:i + chunk]).sample for i in range(0, len(z), chunk)])
        x = ((x.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
        return x.permute(0, 2, 3, 1).cpu().numpy()

    # UNet ------------------------------------------------------------------------------------------
    def predict(self, x: torch.Tensor, t: int, cond: torch.Tensor, uncond: torch.Tensor | None = None,
                scale: float = 1.0) -> torch.Tensor:
        """The UNet's output (epsilon, v or x0, as its scheduler config says), with CFG when `uncond` is given.

        One batched pass over [uncond, cond]; `x` is (1, C, F, h, w), `cond`/`uncond` (1, T, D).
        """
        if uncond is None or scale == 1.0:
            return self.unet(x.to(self.dtype), t, encoder_hidden_states=cond).sample.to(x.dtype)
        out = self.unet(torch.cat([x, x]).to(self.dtype), t, encoder_hidden_states=torch.cat([uncond, cond])).sample
        out_uncond, out_cond = out.to(x.dtype).chunk(2)
        return out_uncond + scale * (out_cond - out_uncond)

    def features(self, hooks: FeatureHooks, x: torch.Tensor, t: int, cond: torch.Tensor) -> dict[str, torch.Tensor]:
        """Hooked activations as (B, F, D, h, w), from a pass that stops after the last hooked module."""
        frames = x.shape[2]
        captured = hooks.run(self.unet, x.to(self.dtype), t, encoder_hidden_states=cond)
        return {name: f.unflatten(0, (-1, frames)).float() for name, f in captured.items()}

    def predict_observed(self, hooks: FeatureHooks, x: torch.Tensor, t: int, cond: torch.Tensor,
                         uncond: torch.Tensor | None = None, scale: float = 1.0
                         ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """`predict` plus the hooked activations of its conditional branch, as `features` gives them, read off
        the same pass (no extra forward)."""
        frames = x.shape[2]
        out, captured = hooks.observe(self.predict, x, t, cond, uncond, scale)
        return out, {name: f.unflatten(0, (-1, frames))[-1:].float() for name, f in captured.items()}


def load_model(model: str | None = None, *, device: str = "auto", dtype: str = "auto",
               allow_unsafe_weights: bool = False, vae_slicing: bool = False) -> TextToVideo:
    """Loads the components of a diffusers-format text-to-video checkpoint, frozen and in eval mode."""
    from diffusers import AutoencoderKL, UNet3DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    path = resolve_model_path(model)
    safe = check_model_folder(path, allow_unsafe_weights)
    dev = pick_device(device)
    torch_dtype = pick_dtype(dtype, dev)
    check_model_configs(path, torch_dtype)
    try:
        unet = UNet3DConditionModel.from_pretrained(path, subfolder="unet", torch_dtype=torch_dtype,
                                                    use_safetensors=safe["unet"])
        vae = AutoencoderKL.from_pretrained(path, subfolder="vae", torch_dtype=torch_dtype,
                                            use_safetensors=safe["vae"])
        # transformers 5 would otherwise load in the config's dtype (fp16 for ZeroScope)
        text_encoder = CLIPTextModel.from_pretrained(path, subfolder="text_encoder", dtype=torch_dtype,
                                                     use_safetensors=safe["text_encoder"])
        tokenizer = CLIPTokenizer.from_pretrained(path, subfolder="tokenizer")
        scheduler_config = json.loads(next((path / "scheduler").glob("*.json")).read_text())
    except (OSError, ValueError, StopIteration, json.JSONDecodeError, SafetensorError, KeyError, TypeError,
            RuntimeError) as e:
        if isinstance(e, RuntimeError) and "out of memory" in str(e).lower():
            raise
        first = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
        raise ModelError(f"cannot load the model in {path}: {first}") from None
    for m in (unet, vae, text_encoder):
        m.requires_grad_(False).eval().to(dev)
    identity = model_identity(path)
    defaults = read_defaults(path, unet.config, vae.config)
    logger.info("loaded %s (%s) on %s in %s", path, identity, dev, torch_dtype)
    return TextToVideo(unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
                       scheduler_config=scheduler_config, path=path, identity=identity, defaults=defaults,
                       device=dev, dtype=torch_dtype, vae_slicing=vae_slicing)
