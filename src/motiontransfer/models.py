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
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np
import torch

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
        data = json.loads(extra.read_text())
        return ModelDefaults(width=int(data["width"]), height=int(data["height"]), frames=int(data["frames"]),
                             fps=float(data.get("fps", DEFAULT_FPS)), negative_prompt=data.get("negative_prompt"),
                             method=data.get("method_defaults") or None,
                             vocabulary=tuple(data["vocabulary"]) if data.get("vocabulary") else None)
    for key, (w, h, f) in KNOWN_SIZES.items():
        if key in path.name or key in path.parent.parent.name:      # a folder, or a hub cache snapshot
            return ModelDefaults(width=w, height=h, frames=f)
    scale = 2 ** (len(vae_config.block_out_channels) - 1)
    size = unet_config.sample_size
    size = size[0] if isinstance(size, (list, tuple)) else size
    side = int(size or 32) * scale
    return ModelDefaults(width=side, height=side, frames=DEFAULT_FRAMES)


def model_defaults(model: str | None = None) -> ModelDefaults:
    """What a checkpoint recommends (`read_defaults`), read from its folder without loading the weights."""
    from types import SimpleNamespace

    path = resolve_model_path(model)
    try:
        unet, vae = (SimpleNamespace(**json.loads((path / c / "config.json").read_text())) for c in ("unet", "vae"))
    except (OSError, ValueError) as e:
        raise ModelError(f"cannot read the configs of the model in {path} ({type(e).__name__})") from None
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
    except (OSError, ValueError, StopIteration, json.JSONDecodeError) as e:
        raise ModelError(f"cannot load the model in {path}: {str(e).splitlines()[0] if str(e) else type(e).__name__}"
                         ) from None
    for m in (unet, vae, text_encoder):
        m.requires_grad_(False).eval().to(dev)
    identity = model_identity(path)
    defaults = read_defaults(path, unet.config, vae.config)
    logger.info("loaded %s (%s) on %s in %s", path, identity, dev, torch_dtype)
    return TextToVideo(unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
                       scheduler_config=scheduler_config, path=path, identity=identity, defaults=defaults,
                       device=dev, dtype=torch_dtype, vae_slicing=vae_slicing)
