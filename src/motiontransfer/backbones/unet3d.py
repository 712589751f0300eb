"""The UNet3D family: diffusers' `UNet3DConditionModel` + `AutoencoderKL` + `CLIPTextModel`, DDIM.

The folder layout of `cerspense/zeroscope_v2_576w` and `damo-vilab/text-to-video-ms-1.7b` (and of the shipped
shapes model): `unet/`, `vae/`, `text_encoder/`, `tokenizer/`, `scheduler/`. One latent frame per video frame;
the VAE is an image VAE applied frame by frame, latents scaled by its `scaling_factor` (and, when its config has
them, normalised per channel by `latents_mean` / `latents_std`). Classifier-free guidance runs as one batch
[unconditional, conditional]. Hooked UNet layers give (B*F, C, h, w), returned as (B, F, C, h, w).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..config import DEFAULT_LAYERS, REFERENCE_NEGATIVE_PROMPT
from ..errors import ConfigError, ModelError
from ..features import FeatureHooks
from ..schedules import DDIMSchedule
from .base import (BackboneBase, ModelDefaults, check_bounds, check_components, check_loaded, check_memory,
                   check_weights, load_error, read_json, scheduler_config, to_uint8)

logger = logging.getLogger(__name__)

FAMILY = "unet3d"
COMPONENTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
WEIGHTS = ("unet", "vae", "text_encoder")
# Native sizes of known checkpoints whose UNet config cannot tell them (non-square): (width, height, frames).
KNOWN_SIZES = {"zeroscope_v2_576w": (576, 320, 24), "zeroscope_v2_xl": (1024, 576, 24),
               "text-to-video-ms-1.7b": (256, 256, 16)}
DEFAULT_FRAMES = 24          # ZeroScope's; used when neither the checkpoint nor the table says
CHECKPOINT_UNITS = ("blocks", "layers")
METHOD_DEFAULTS: dict = {}      # what the family recommends to the method (the config's defaults are its own)


def native_defaults(path: Path) -> ModelDefaults:
    """What a checkpoint without `motiontransfer.json` is made for: the table of known ones, else a square of the
    UNet's sample size times the VAE's scale, at `DEFAULT_FRAMES`."""
    for key, (width, height, frames) in KNOWN_SIZES.items():
        if key in path.name or key in path.parent.parent.name:      # a folder, or a hub cache snapshot
            return ModelDefaults(width=width, height=height, frames=frames)
    unet, vae = (read_json(path / c / "config.json") for c in ("unet", "vae"))
    scale = 2 ** (len(vae.get("block_out_channels") or [0]) - 1)
    size = unet.get("sample_size")
    size = size[0] if isinstance(size, (list, tuple)) else size
    side = int(size or 32) * scale
    return ModelDefaults(width=side, height=side, frames=DEFAULT_FRAMES)


def check_folder(path: Path, allow_unsafe: bool) -> dict[str, bool]:
    """Checks every component is present; returns, per weight component, whether it has safetensors."""
    check_components(path, COMPONENTS)
    safe = check_weights(path, WEIGHTS, allow_unsafe)
    if not any((path / "tokenizer").glob("*.json")):
        raise ModelError(f"model folder {path} is incomplete: tokenizer/ has no vocabulary")
    tokenizer_config = path / "tokenizer" / "tokenizer_config.json"
    if tokenizer_config.is_file():          # prompts are padded to this length: it must fit the text encoder
        positions = read_json(path / "text_encoder" / "config.json").get("max_position_embeddings", 77)
        length = read_json(tokenizer_config).get("model_max_length", positions)
        check_bounds(tokenizer_config, {"model_max_length": (int(length) if isinstance(length, float)
                                                             and length.is_integer() else length,
                                                             1, positions if isinstance(positions, int) else 77)})
    return safe


def check_configs(path: Path, torch_dtype: torch.dtype = torch.float32) -> int:
    """Sanity-check the UNet, VAE and text-encoder configs before anything is allocated: every size field in a
    sane range, and the weights' estimated size within this machine's memory. Returns the estimate in bytes;
    raises a one-line ModelError naming the field otherwise."""
    unet, vae, text = (read_json(path / c / "config.json") for c in WEIGHTS)

    def ints(config: dict, name: str) -> list:
        value = config.get(name)
        return list(value) if isinstance(value, (list, tuple)) else [value]

    for label, config in (("unet", unet), ("vae", vae)):
        source = path / label / "config.json"
        channels = ints(config, "block_out_channels")
        if not 1 <= len(channels) <= 8:
            raise ModelError(f"{source}: block_out_channels has {len(channels)} entries; 1 to 8 expected")
        check_bounds(source, {f"block_out_channels[{i}]": (c, 1, 8192) for i, c in enumerate(channels)})
        check_bounds(source, {name: (v, 1, 64) for name in ("in_channels", "out_channels", "latent_channels")
                              if (v := config.get(name)) is not None})
        check_bounds(source, {"layers_per_block": (config.get("layers_per_block", 2), 1, 16)})
        sizes = ints(config, "sample_size")
        check_bounds(source, {"sample_size": (s, 1, 2048) for s in sizes if s is not None})
    source = path / "unet" / "config.json"
    check_bounds(source, {"cross_attention_dim": (v, 1, 16384) for v in ints(unet, "cross_attention_dim")
                          if v is not None})
    source = path / "text_encoder" / "config.json"
    text_fields = {"hidden_size": (text.get("hidden_size", 512), 1, 16384),
                   "intermediate_size": (text.get("intermediate_size", 2048), 1, 65536),
                   "num_hidden_layers": (text.get("num_hidden_layers", 12), 1, 128),
                   "vocab_size": (text.get("vocab_size", 49408), 1, 1_000_000),
                   "max_position_embeddings": (text.get("max_position_embeddings", 77), 1, 16384)}
    check_bounds(source, text_fields)
    # parameters, roughly (resnets, temporal convolutions and attention per level; encoder and decoder)
    unet_params = 120 * (unet.get("layers_per_block", 2) + 1) * sum(c * c for c in ints(unet, "block_out_channels"))
    vae_params = 60 * (vae.get("layers_per_block", 1) + 1) * sum(c * c for c in ints(vae, "block_out_channels"))
    h, m, n, v, p = (text_fields[k][0] for k in text_fields)
    text_params = (v + p) * h + n * (4 * h * h + 2 * h * m)
    estimate = (unet_params + vae_params + text_params) * torch.tensor([], dtype=torch_dtype).element_size()
    check_memory(path, estimate, "unet/vae block_out_channels, text_encoder hidden_size")
    return estimate


def unet_checkpoint_units(unet: nn.Module, units: str = "layers") -> list[str]:
    """What `checkpoint` recomputes as one piece: the UNet's top-level blocks (`blocks`: down_blocks.i,
    mid_block, up_blocks.i) or every layer inside them (`layers`: resnets.j, temp_convs.j, attentions.j,
    temp_attentions.j, the down- and upsamplers)."""
    if units not in CHECKPOINT_UNITS:
        raise ConfigError(f"checkpoint units must be one of {', '.join(CHECKPOINT_UNITS)}, got {units!r}")
    blocks = [f"down_blocks.{i}" for i in range(len(unet.down_blocks))]
    blocks += ["mid_block"] if getattr(unet, "mid_block", None) is not None else []
    blocks += [f"up_blocks.{i}" for i in range(len(unet.up_blocks))]
    if units == "blocks":
        return blocks
    modules = dict(unet.named_modules())
    return [f"{block}.{group}.{j}" for block in blocks for group, layers in modules[block].named_children()
            if isinstance(layers, nn.ModuleList) for j in range(len(layers))]


@dataclass
class UNet3DBackbone(BackboneBase):
    """The frozen UNet3D components and the one adapter over them. Latents are (B, C, F, h, w), scaled."""

    unet: nn.Module = None

    family = FAMILY

    @property
    def denoiser(self) -> nn.Module:
        return self.unet

    @property
    def default_layers(self) -> tuple[str, ...]:
        return DEFAULT_LAYERS

    @property
    def default_negative_prompt(self) -> str:
        return REFERENCE_NEGATIVE_PROMPT

    @property
    def vae_scale(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def scaling_factor(self) -> float:
        return float(self.vae.config.scaling_factor)

    def schedule(self, steps: int) -> DDIMSchedule:
        return DDIMSchedule(self.scheduler_config, steps)

    def latent_shape(self, frames: int, height: int, width: int) -> tuple[int, ...]:
        return 1, self.unet.config.in_channels, frames, height // self.vae_scale, width // self.vae_scale

    def check_size(self, frames: int, height: int, width: int) -> None:
        """Any frame count; sides in multiples of 8 (`config.validate` checks them for every family)."""

    def valid_frames(self, available: int) -> int:
        """Any frame count is valid: all of them."""
        return available

    def checkpoint_units(self, units: str = "layers") -> list[str]:
        return unet_checkpoint_units(self.unet, units)

    def _channel_stats(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The VAE config's per-channel `latents_mean` / `latents_std` as (1, C, 1, 1), or None when unset."""
        mean, std = (getattr(self.vae.config, k, None) for k in ("latents_mean", "latents_std"))
        if mean is None or std is None:
            return None
        return tuple(torch.tensor(v, device=like.device, dtype=like.dtype).view(1, -1, 1, 1) for v in (mean, std))

    # text ------------------------------------------------------------------------------------------
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
    def decode_latents(self, latents: torch.Tensor, quantize: str = "round") -> np.ndarray:
        """(1, C, F, h, w) -> (F, H, W, 3) uint8, `quantize`d to 8 bits (`base.to_uint8`)."""
        z = latents[0].permute(1, 0, 2, 3).to(self.dtype) / self.scaling_factor  # (F, C, h, w)
        stats = self._channel_stats(z)
        if stats is not None:
            z = z * stats[1] + stats[0]
        chunk = 1 if self.vae_slicing else len(z)
        with self._running(self.vae) as vae:
            x = torch.cat([vae.decode(z[i:i + chunk]).sample for i in range(0, len(z), chunk)])
        return to_uint8(x, quantize).permute(0, 2, 3, 1).cpu().numpy()

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


def load(path: Path, *, safe: dict[str, bool], device: torch.device, dtype: torch.dtype, identity: str,
         defaults) -> UNet3DBackbone:
    """The components of a UNet3D folder (checked by `check_folder`, whose answer `safe` is), frozen, in eval
    mode, on `device`."""
    from diffusers import AutoencoderKL, UNet3DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    config = scheduler_config(path)
    try:
        unet = UNet3DConditionModel.from_pretrained(path, subfolder="unet", torch_dtype=dtype,
                                                    use_safetensors=safe["unet"])
        vae = AutoencoderKL.from_pretrained(path, subfolder="vae", torch_dtype=dtype, use_safetensors=safe["vae"])
        # transformers 5 would otherwise load in the config's dtype (fp16 for ZeroScope)
        text_encoder = CLIPTextModel.from_pretrained(path, subfolder="text_encoder", dtype=dtype,
                                                     use_safetensors=safe["text_encoder"])
        tokenizer = CLIPTokenizer.from_pretrained(path, subfolder="tokenizer")
    except Exception as e:            # the libraries' own errors for a damaged file (tokenizers raises Exception)
        raise load_error(path, e) from None
    for m in (unet, vae, text_encoder):
        m.requires_grad_(False).eval().to(device)
    backbone = UNet3DBackbone(path=path, identity=identity, defaults=defaults, device=device, dtype=dtype,
                              unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
                              scheduler_config=config)
    check_loaded(path, tokenizer, text_encoder, backbone.schedule)
    return backbone
