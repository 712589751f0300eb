"""The Wan family (Wan2.1 text-to-video): diffusers' `WanTransformer3DModel` + `AutoencoderKLWan` + transformers'
`UMT5EncoderModel`, flow matching.

The folder layout of `Wan-AI/Wan2.1-T2V-1.3B-Diffusers` and `Wan-AI/Wan2.1-T2V-14B-Diffusers` (`WanPipeline`):
`transformer/`, `vae/`, `text_encoder/`, `tokenizer/`, `scheduler/`, and of the shapes model on this architecture.
What the adapter follows from diffusers' `WanPipeline` (0.42):

- Latents (B, C, F', h, w) with F' = 1 + (F - 1) / r_t and h = H / r_s, the VAE's temporal and spatial factors read
  from its config (`temperal_downsample`, `dim_mult`; Wan2.1: 4 and 8). The VAE encodes frame 0 alone and then
  chunks of 4, so F is 4k + 1 whatever r_t; H and W are multiples of r_s times the transformer's patch size.
  Latents are normalised per channel, (z - latents_mean) / latents_std; there is no scaling factor.
- Prompts are padded to min(512, the tokenizer's model_max_length) tokens, encoded with the attention mask, and
  the embeddings past each prompt's true length are zeroed. CFG runs as two calls (unconditional, conditional).
- The transformer predicts the flow velocity v = eps - x0 and is called with the scheduler's timestep
  (sigma x 1000); the schedule is `schedules.FlowSchedule` on the folder's own scheduler's sigma grid.
- Hooked blocks (`blocks.i`) return (B, N, D) tokens ordered (f, h, w) after the patch embedding; `features`
  gives them as (B, F', D, h', w').

Not loaded, with a one-line error: Wan2.2's two-expert folders (`transformer_2`, `boundary_ratio`), TI2V-5B
(`expand_timesteps`), and the image-to-video pipelines (another `_class_name`).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..errors import ConfigError, ModelError
from ..features import FeatureHooks
from ..schedules import FlowSchedule
from .base import (BackboneBase, ModelDefaults, check_bounds, check_components, check_loaded, check_memory,
                   check_weights, load_error, read_json, scheduler_config, to_uint8)

logger = logging.getLogger(__name__)

FAMILY = "wan"
COMPONENTS = ("transformer", "vae", "text_encoder", "tokenizer", "scheduler")
WEIGHTS = ("transformer", "vae", "text_encoder")
NATIVE = (832, 480, 81, 16.0)           # WanPipeline's defaults: width, height, frames, fps
MAX_TEXT_TOKENS = 512                   # WanPipeline's max_sequence_length
GUIDANCE_SCALE = 5.0                    # WanPipeline's default CFG scale (its default negative prompt is "")
# what the family recommends to the method, under what a folder's motiontransfer.json says
METHOD_DEFAULTS = {"guidance_scale": GUIDANCE_SCALE}


def vae_factors(vae_config: dict) -> tuple[int, int]:
    """(temporal, spatial) compression of an `AutoencoderKLWan` config, from its structure: one spatial halving
    per level after the first (`dim_mult`), one temporal halving per true `temperal_downsample`. A declared
    `scale_factor_*` that disagrees with the structure is a damaged folder."""
    spatial = 2 ** (len(vae_config.get("dim_mult") or [1, 2, 4, 4]) - 1)
    temporal = 2 ** sum(bool(d) for d in (vae_config.get("temperal_downsample") or [False, True, True]))
    if vae_config.get("patch_size"):
        raise ModelError("this Wan VAE patchifies its input (patch_size, Wan2.2 TI2V-5B); only the Wan2.1 VAE "
                         "layout is supported")
    for key, value in (("scale_factor_temporal", temporal), ("scale_factor_spatial", spatial)):
        declared = vae_config.get(key)
        if declared is not None and declared != value:
            raise ModelError(f"vae/config.json declares {key} = {declared} but its layers give {value}; the model "
                             f"folder is damaged")
    return temporal, spatial


def native_defaults(path: Path) -> ModelDefaults:
    """WanPipeline's defaults (832 x 480, 81 frames at 16 fps) for a folder without `motiontransfer.json`."""
    width, height, frames, fps = NATIVE
    return ModelDefaults(width=width, height=height, frames=frames, fps=fps)


def check_pipeline(path: Path) -> None:
    """Refuses what the adapter does not run: a second expert, per-token timesteps."""
    index = path / "model_index.json"
    data = read_json(index) if index.is_file() else {}
    second = data.get("transformer_2")
    if (isinstance(second, list) and second and second[0] is not None) or (path / "transformer_2").is_dir() \
            or data.get("boundary_ratio") is not None:
        raise ModelError(f"{path} is a two-expert Wan2.2 model (transformer_2, boundary_ratio); only one "
                         f"transformer is supported (Wan2.1 T2V 1.3B / 14B and their layout)")
    if data.get("expand_timesteps"):
        raise ModelError(f"{path} uses per-token timesteps (expand_timesteps: Wan2.2 TI2V-5B), which are not "
                         f"supported; use a Wan2.1 T2V model")


def check_folder(path: Path, allow_unsafe: bool) -> dict[str, bool]:
    check_pipeline(path)
    check_components(path, COMPONENTS)
    safe = check_weights(path, WEIGHTS, allow_unsafe)
    if not any((path / "tokenizer").glob("*.json")):
        raise ModelError(f"model folder {path} is incomplete: tokenizer/ has no tokenizer files")
    return safe


def check_configs(path: Path, torch_dtype: torch.dtype = torch.float32) -> int:
    """Bounds on the transformer, VAE and text-encoder configs before anything is allocated, and the weights'
    estimated size against this machine's memory; returns the estimate in bytes."""
    transformer, vae, text = (read_json(path / c / "config.json") for c in WEIGHTS)
    source = path / "transformer" / "config.json"
    fields = {name: (transformer.get(name, default), low, high) for name, default, low, high in (
        ("num_layers", 40, 1, 256), ("num_attention_heads", 40, 1, 1024), ("attention_head_dim", 128, 2, 1024),
        ("in_channels", 16, 1, 256), ("out_channels", 16, 1, 256), ("text_dim", 4096, 1, 65536),
        ("freq_dim", 256, 2, 65536), ("ffn_dim", 13824, 1, 1 << 20))}
    check_bounds(source, fields)
    patch = transformer.get("patch_size", (1, 2, 2))
    if not isinstance(patch, (list, tuple)) or len(patch) != 3:
        raise ModelError(f"{source}: patch_size must be three integers (t, h, w), got {str(patch)[:40]}")
    check_bounds(source, {f"patch_size[{i}]": (p, 1, 16) for i, p in enumerate(patch)})
    if transformer.get("image_dim") is not None:
        raise ModelError(f"{source}: an image-conditioned Wan transformer (image_dim); only text-to-video is "
                         f"supported")
    source = path / "vae" / "config.json"
    check_bounds(source, {"base_dim": (vae.get("base_dim", 96), 1, 4096), "z_dim": (vae.get("z_dim", 16), 1, 256),
                          "num_res_blocks": (vae.get("num_res_blocks", 2), 1, 16)})
    mults = vae.get("dim_mult", [1, 2, 4, 4])
    if not isinstance(mults, list) or not 1 <= len(mults) <= 8:
        raise ModelError(f"{source}: dim_mult must be a list of 1 to 8 integers")
    check_bounds(source, {f"dim_mult[{i}]": (m, 1, 64) for i, m in enumerate(mults)})
    vae_factors(vae)
    z = vae.get("z_dim", 16)
    for key in ("latents_mean", "latents_std"):
        stats = vae.get(key)
        if stats is not None and (not isinstance(stats, list) or len(stats) != z
                                  or not all(isinstance(v, (int, float)) and math.isfinite(v) for v in stats)
                                  or (key == "latents_std" and min(stats) <= 0)):
            raise ModelError(f"{source}: {key} must be {z} finite numbers (z_dim){', all positive' * (key == 'latents_std')}")
    if transformer.get("in_channels", 16) != z:
        raise ModelError(f"the transformer takes {transformer.get('in_channels')} latent channels but the VAE makes "
                         f"{z}; the components do not belong together")
    source = path / "text_encoder" / "config.json"
    text_fields = {name: (text.get(name, default), 1, high) for name, default, high in (
        ("d_model", 4096, 65536), ("d_ff", 10240, 1 << 20), ("num_layers", 24, 256), ("num_heads", 64, 1024),
        ("d_kv", 64, 4096), ("vocab_size", 256384, 2_000_000))}
    check_bounds(source, text_fields)
    if text.get("d_model") != transformer.get("text_dim", 4096):
        raise ModelError(f"the text encoder gives {text.get('d_model')} features but the transformer takes "
                         f"{transformer.get('text_dim', 4096)} (text_dim); the components do not belong together")
    width = fields["num_attention_heads"][0] * fields["attention_head_dim"][0]
    blocks = fields["num_layers"][0] * (4 * width * width * 2 + 2 * width * fields["ffn_dim"][0])
    d, f, n, v = (text_fields[k][0] for k in ("d_model", "d_ff", "num_layers", "vocab_size"))
    text_params = v * d + n * (4 * d * d + 3 * d * f)
    vae_params = 200 * vae.get("base_dim", 96) ** 2 * sum(m * m for m in mults)
    estimate = (blocks + text_params + vae_params) * torch.tensor([], dtype=torch_dtype).element_size()
    check_memory(path, estimate, "transformer num_layers and width, text_encoder d_model")
    return estimate


@dataclass
class WanBackbone(BackboneBase):
    """The frozen Wan components and the one adapter over them. Latents are (B, C, F', h, w), normalised."""

    transformer: nn.Module = None

    family = FAMILY

    @property
    def denoiser(self) -> nn.Module:
        return self.transformer

    @property
    def default_layers(self) -> tuple[str, ...]:
        """The middle block (FastVMT reads block 14 of Wan2.1-1.3B's 30; DiTFlow one middle block of CogVideoX);
        the README's probe section says what was measured."""
        return (f"blocks.{len(self.transformer.blocks) // 2}",)

    @property
    def default_negative_prompt(self) -> str:
        return ""

    @property
    def factors(self) -> tuple[int, int]:
        """(temporal, spatial) compression of the VAE."""
        return vae_factors(dict(self.vae.config))

    @property
    def patch(self) -> tuple[int, int, int]:
        return tuple(self.transformer.config.patch_size)

    def schedule(self, steps: int) -> FlowSchedule:
        return FlowSchedule(self.scheduler_config, steps)

    def latent_frames(self, frames: int) -> int:
        return 1 + (frames - 1) // self.factors[0]

    def latent_shape(self, frames: int, height: int, width: int) -> tuple[int, ...]:
        spatial = self.factors[1]
        return 1, self.transformer.config.in_channels, self.latent_frames(frames), height // spatial, width // spatial

    def size_rules(self) -> tuple[int, int]:
        """(frame step, side multiple): frames 4k + 1 (the VAE's chunks; k a multiple of the temporal factor
        over 4 when that is larger), sides multiples of the spatial factor times the patch."""
        temporal, spatial = self.factors
        return max(4, temporal), spatial * max(self.patch[1], self.patch[2])

    def check_size(self, frames: int, height: int, width: int) -> None:
        step, side = self.size_rules()
        problems = []
        if (frames - 1) % step or frames < 1:
            lower = max(1, (frames - 1) // step * step + 1)
            problems.append(f"--frames {frames} is not {step}k + 1 (nearest: {lower} or {lower + step})")
        for name, value in (("--height", height), ("--width", width)):
            if value % side:
                lower = max(side, value // side * side)
                problems.append(f"{name} {value} is not a multiple of {side} (nearest: {lower} or {lower + side})")
        if problems:
            raise ConfigError(f"this Wan model needs frames 4k + 1 and sides in multiples of {side}: "
                              f"{'; '.join(problems)}")

    def valid_frames(self, available: int) -> int:
        """The longest valid frame count at most `available` (at least 1)."""
        step = self.size_rules()[0]
        return max(1, (available - 1) // step * step + 1)

    def checkpoint_units(self, units: str = "blocks") -> list[str]:
        if units not in ("blocks", "layers"):
            raise ConfigError(f"checkpoint units must be blocks or layers, got {units!r}")
        return [f"blocks.{i}" for i in range(len(self.transformer.blocks))]

    # text ------------------------------------------------------------------------------------------
    @torch.no_grad()
    def encode_prompts(self, prompts: list[str]) -> torch.Tensor:
        """(B, T, D) UMT5 embeddings, T = min(512, the tokenizer's model_max_length), zero past each prompt."""
        for prompt in prompts:
            self.check_words(prompt)
        length = int(min(MAX_TEXT_TOKENS, self.tokenizer.model_max_length))
        tokens = self.tokenizer(prompts, padding="max_length", max_length=length, truncation=True,
                                add_special_tokens=True, return_attention_mask=True, return_tensors="pt")
        mask = tokens.attention_mask
        with self._running(self.text_encoder) as encoder:
            hidden = encoder(tokens.input_ids.to(self.device), mask.to(self.device)).last_hidden_state
        keep = mask.to(hidden.device).gt(0).unsqueeze(-1)
        return (hidden * keep).to(self.dtype)

    # pixels <-> latents ----------------------------------------------------------------------------
    def _stats(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean, std = (torch.tensor(getattr(self.vae.config, k), device=like.device, dtype=like.dtype)
                     .view(1, -1, 1, 1, 1) for k in ("latents_mean", "latents_std"))
        return mean, std

    def _tiling(self) -> None:
        """`vae_slicing` for this family: the VAE encodes and decodes in spatial tiles (diffusers' tiling)."""
        (self.vae.enable_tiling if self.vae_slicing else self.vae.disable_tiling)()

    @torch.no_grad()
    def encode_frames(self, frames: np.ndarray, generator: torch.Generator | None = None) -> torch.Tensor:
        """(F, H, W, 3) uint8 -> (1, C, F', h, w), normalised: the posterior mean, or with a CPU `generator` a
        posterior sample drawn from it."""
        x = torch.from_numpy(np.ascontiguousarray(frames)).to(self.device)
        x = x.permute(3, 0, 1, 2).unsqueeze(0).to(self.vae.dtype).div(127.5).sub(1.0)     # (1, 3, F, H, W)
        self._tiling()
        with self._running(self.vae) as vae:
            posterior = vae.encode(x).latent_dist
        z = posterior.mean
        if generator is not None:
            eps = torch.randn(z.shape, generator=generator, dtype=torch.float32).to(z.device, z.dtype)
            z = z + posterior.std * eps
        mean, std = self._stats(z)
        return ((z - mean) / std).to(self.dtype).contiguous()

    @torch.no_grad()
    def decode_latents(self, latents: torch.Tensor, quantize: str = "round") -> np.ndarray:
        """(1, C, F', h, w) -> (F, H, W, 3) uint8, `quantize`d to 8 bits (`base.to_uint8`)."""
        z = latents.to(self.vae.dtype)
        mean, std = self._stats(z)
        self._tiling()
        with self._running(self.vae) as vae:
            x = vae.decode(z * std + mean).sample                               # (1, 3, F, H, W)
        return to_uint8(x[0], quantize).permute(1, 2, 3, 0).cpu().numpy()

    # transformer -----------------------------------------------------------------------------------
    def _call(self, x: torch.Tensor, t: float, text: torch.Tensor) -> torch.Tensor:
        timestep = torch.full((x.shape[0],), float(t), device=x.device)
        return self.transformer(hidden_states=x.to(self.dtype), timestep=timestep, encoder_hidden_states=text,
                                return_dict=False)[0]

    def predict(self, x: torch.Tensor, t: float, cond: torch.Tensor, uncond: torch.Tensor | None = None,
                scale: float = 1.0) -> torch.Tensor:
        """The flow velocity, with CFG as two calls when `uncond` is given. `x` (1, C, F', h, w)."""
        out = self._call(x, t, cond).to(x.dtype)
        if uncond is None or scale == 1.0:
            return out
        out_uncond = self._call(x, t, uncond).to(x.dtype)
        return out_uncond + scale * (out - out_uncond)

    def _grid(self, x: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """(B, N, D) block output -> (B, F', D, h', w')."""
        p_t, p_h, p_w = self.patch
        f, h, w = x.shape[2] // p_t, x.shape[3] // p_h, x.shape[4] // p_w
        return tokens.unflatten(1, (f, h, w)).permute(0, 1, 4, 2, 3)

    def features(self, hooks: FeatureHooks, x: torch.Tensor, t: float, cond: torch.Tensor) -> dict[str, torch.Tensor]:
        """Hooked block outputs as (B, F', D, h', w'), from a pass that stops after the last hooked block."""
        captured = hooks.run(self._call, x, t, cond)
        return {name: self._grid(x, f).float() for name, f in captured.items()}

    def predict_observed(self, hooks: FeatureHooks, x: torch.Tensor, t: float, cond: torch.Tensor,
                         uncond: torch.Tensor | None = None, scale: float = 1.0
                         ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """`predict` plus the hooked features of its conditional call, read off that call (no extra pass)."""
        out, captured = hooks.observe(self._call, x, t, cond)
        out = out.to(x.dtype)
        if uncond is not None and scale != 1.0:
            out_uncond = self._call(x, t, uncond).to(x.dtype)
            out = out_uncond + scale * (out - out_uncond)
        return out, {name: self._grid(x, f).float() for name, f in captured.items()}


def load(path: Path, *, safe: dict[str, bool], device: torch.device, dtype: torch.dtype, identity: str,
         defaults) -> WanBackbone:
    """The components of a WanPipeline folder (checked by `check_folder`), frozen, in eval mode, on `device`.
    The VAE stays in fp32, as diffusers' Wan examples keep it."""
    from diffusers import AutoencoderKLWan, WanTransformer3DModel
    from transformers import AutoTokenizer, UMT5EncoderModel

    config = scheduler_config(path)
    try:
        transformer = WanTransformer3DModel.from_pretrained(path, subfolder="transformer", torch_dtype=dtype,
                                                            use_safetensors=safe["transformer"])
        vae = AutoencoderKLWan.from_pretrained(path, subfolder="vae", torch_dtype=torch.float32,
                                               use_safetensors=safe["vae"])
        text_encoder = UMT5EncoderModel.from_pretrained(path, subfolder="text_encoder", dtype=dtype,
                                                        use_safetensors=safe["text_encoder"])
        tokenizer = AutoTokenizer.from_pretrained(path, subfolder="tokenizer")
    except Exception as e:            # the libraries' own errors for a damaged file (tokenizers raises Exception)
        raise load_error(path, e) from None
    for m in (transformer, vae, text_encoder):
        m.requires_grad_(False).eval().to(device)
    backbone = WanBackbone(path=path, identity=identity, defaults=defaults, device=device, dtype=dtype,
                           transformer=transformer, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
                           scheduler_config=config)
    check_loaded(path, tokenizer, text_encoder, backbone.schedule)
    return backbone
