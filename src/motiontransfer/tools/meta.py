"""Models on the meta device: a backbone of either family built from its component configs, with shapes and dtypes
but no data and no memory, for the counts of `tools.memory` and `tools.passes`.

    ModelSpec       a model to count: its family, component configs, dtype, native size and prompt length
    ZEROSCOPE       cerspense/zeroscope_v2_576w (tools/zeroscope.py), fp16
    WAN_1_3B        Wan-AI/Wan2.1-T2V-1.3B-Diffusers (tools/wan.py), bf16 with the VAE in fp32
    TINY_WAN        the tests' tiny Wan layout, fp32, for checks against real CPU runs
    meta_backbone   the family's adapter (`backbones.unet3d.UNet3DBackbone`, `backbones.wan.WanBackbone`) over
                    the components built on the meta device, cached
    meta_model      the same for a UNet3D given by its configs (the ZeroScope counts' entry point)
    cpu_backbone    the same with random weights on the CPU, for checking the counts against a real run

The components get the dtypes the family's loader gives them: UNet3D all in the run's dtype; Wan as
`backbones.wan.load` loads it (`from_pretrained(torch_dtype=...)` keeps the transformer's
`_keep_in_fp32_modules` in fp32; the VAE stays fp32). A stand-in tokenizer gives every prompt its full padded
length, so `encode_prompts` runs the adapter's own code.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from dataclasses import dataclass, replace
from pathlib import Path
from types import SimpleNamespace
from typing import Iterator

import torch
from torch import nn

from ..backbones.base import Backbone, ModelDefaults
from ..backbones.unet3d import UNet3DBackbone
from ..backbones.wan import WanBackbone
from ..errors import ConfigError
from . import wan, zeroscope

# the denoiser config field that gives the width of the text states it takes, per family
TEXT_WIDTH_FIELD = {"unet3d": "cross_attention_dim", "wan": "text_dim"}


def frozen(config: dict | None) -> tuple | None:
    """A config dict as a sorted tuple of (key, value), lists as tuples: hashable, for caches."""
    return None if config is None else tuple(sorted((k, tuple(v) if isinstance(v, list) else v)
                                                   for k, v in config.items()))


@dataclass(frozen=True)
class ModelSpec:
    """A model to count, by its family and component configs (frozen with `frozen`); no weights."""

    family: str                                # "unet3d" | "wan" (backbones.FAMILY_MODULES)
    denoiser: tuple                            # the UNet's or the transformer's config
    vae: tuple | None = None                   # None: not built (counts of the denoiser alone)
    text_encoder: tuple | None = None
    scheduler: tuple | None = None
    dtype: torch.dtype = torch.float16         # the run's dtype
    size: tuple[int, int, int] = (zeroscope.FRAMES, zeroscope.HEIGHT, zeroscope.WIDTH)   # native frames, height,
                                                                                         # width (pixels)
    text_tokens: int = 77                      # prompts are padded to this many tokens

    def __post_init__(self):
        if self.family not in TEXT_WIDTH_FIELD:
            raise ConfigError(f"model family must be one of {', '.join(TEXT_WIDTH_FIELD)}, got {self.family!r}")

    def config(self, part: str) -> dict | None:
        """A component's config as a dict, tuples as lists (as a config.json gives them)."""
        value = getattr(self, part)
        return None if value is None else {k: list(v) if isinstance(v, tuple) else v for k, v in value}

    def only(self, *parts: str) -> "ModelSpec":
        """The spec with only the denoiser and `parts` ("vae", "text_encoder") built."""
        return replace(self, **{p: None for p in ("vae", "text_encoder") if p not in parts})


ZEROSCOPE = ModelSpec("unet3d", frozen(zeroscope.UNET_CONFIG), frozen(zeroscope.VAE_CONFIG),
                      frozen(zeroscope.TEXT_ENCODER_CONFIG), frozen(zeroscope.SCHEDULER_CONFIG), torch.float16)
WAN_1_3B = ModelSpec("wan", frozen(wan.TRANSFORMER_CONFIG), frozen(wan.VAE_CONFIG), frozen(wan.TEXT_ENCODER_CONFIG),
                     frozen(wan.SCHEDULER_CONFIG), wan.DTYPE, (wan.FRAMES, wan.HEIGHT, wan.WIDTH), wan.TEXT_TOKENS)


# The tests' tiny Wan2.1 layout (tests/conftest.py: 2 blocks of width 24, a 4x spatial, 2x temporal VAE, a 1-layer
# UMT5), fp32: small enough to run on the CPU, to check the counts against real runs.
TINY_WAN = ModelSpec("wan", frozen(dict(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12,
                                        in_channels=4, out_channels=4, text_dim=16, freq_dim=16, ffn_dim=32,
                                        num_layers=2, rope_max_seq_len=32)),
                     frozen(dict(base_dim=8, z_dim=4, dim_mult=[1, 2, 2], num_res_blocks=1,
                                 temperal_downsample=[False, True], scale_factor_spatial=4, scale_factor_temporal=2,
                                 latents_mean=[0.1, -0.2, 0.0, 0.3], latents_std=[1.5, 0.8, 1.0, 1.2])),
                     frozen(dict(vocab_size=32, d_model=16, d_kv=8, d_ff=32, num_layers=1, num_heads=2,
                                 relative_attention_num_buckets=8, pad_token_id=0, eos_token_id=1,
                                 decoder_start_token_id=0)),
                     dtype=torch.float32, size=(9, 32, 32), text_tokens=8)


class _MetaTokenizer:
    """Stands in for a tokenizer: every prompt becomes `model_max_length` tokens, all of them real (the longest
    input the encoder takes). The ids exist before any count starts, as a tokenizer's CPU output would."""

    def __init__(self, length: int, device: str = "meta"):
        self.model_max_length = length
        self._ids = torch.zeros(1, length, dtype=torch.long, device=device)
        self._mask = torch.ones(1, length, dtype=torch.long, device=device)

    def __call__(self, prompts: list[str], max_length: int | None = None, **kwargs) -> SimpleNamespace:
        if max_length not in (None, self.model_max_length) or len(prompts) != 1:
            raise ValueError("the meta tokenizer takes one prompt at its full length")
        return SimpleNamespace(input_ids=self._ids, attention_mask=self._mask)


@contextlib.contextmanager
def _quiet(name: str) -> Iterator[None]:
    logger = logging.getLogger(name)
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _frozen_eval(*modules: nn.Module | None) -> None:
    for m in modules:
        if m is not None:
            m.requires_grad_(False).eval()


def _as_loaded(model: nn.Module, dtype: torch.dtype) -> nn.Module:
    """`model` in the dtypes diffusers' `from_pretrained(torch_dtype=dtype)` gives it: `dtype`, except the
    parameters and buffers inside the modules it keeps in fp32 (`_keep_in_fp32_modules`)."""
    model.to(dtype)
    keep = set(getattr(model, "_keep_in_fp32_modules", None) or ())
    for name, module in model.named_modules():
        if keep & set(name.split(".")):
            module.to(torch.float32)
    for name, param in model.named_parameters():         # a kept name may be a parameter's own
        if keep & set(name.split(".")):
            param.data = param.data.float()
    return model


def _build_unet3d(spec: ModelSpec, device: str) -> UNet3DBackbone:
    from diffusers import AutoencoderKL, UNet3DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    dtype = spec.dtype
    with torch.device(device), _quiet("diffusers"):
        unet = UNet3DConditionModel(**dict(spec.denoiser)).to(dtype)
        vae = None if spec.vae is None else AutoencoderKL(**dict(spec.vae)).to(dtype)
        text = None if spec.text_encoder is None else CLIPTextModel(CLIPTextConfig(**dict(spec.text_encoder))).to(dtype)
    _frozen_eval(unet, vae, text)
    return UNet3DBackbone(unet=unet, vae=vae, text_encoder=text, tokenizer=_MetaTokenizer(spec.text_tokens, device),
                          scheduler_config=spec.config("scheduler") or {}, path=Path("meta"), identity="meta",
                          defaults=ModelDefaults(zeroscope.WIDTH, zeroscope.HEIGHT, zeroscope.FRAMES),
                          device=torch.device(device), dtype=dtype)


def _build_wan(spec: ModelSpec, device: str) -> WanBackbone:
    from diffusers import AutoencoderKLWan, WanTransformer3DModel
    from transformers import UMT5Config, UMT5EncoderModel

    with torch.device(device), _quiet("diffusers"), _quiet("transformers"):
        transformer = _as_loaded(WanTransformer3DModel(**spec.config("denoiser")), spec.dtype)
        vae = None if spec.vae is None else AutoencoderKLWan(**spec.config("vae")).to(torch.float32)
        text = None if spec.text_encoder is None else \
            UMT5EncoderModel(UMT5Config(**spec.config("text_encoder"))).to(spec.dtype)
    _frozen_eval(transformer, vae, text)
    frames, height, width = spec.size
    return WanBackbone(transformer=transformer, vae=vae, text_encoder=text, tokenizer=_MetaTokenizer(spec.text_tokens, device),
                       scheduler_config=spec.config("scheduler") or {}, path=Path("meta"), identity="meta",
                       defaults=ModelDefaults(width, height, frames, wan.FPS), device=torch.device(device),
                       dtype=spec.dtype)


BUILDERS = {"unet3d": _build_unet3d, "wan": _build_wan}


@functools.lru_cache(maxsize=6)
def meta_backbone(spec: ModelSpec) -> Backbone:
    """The family's adapter over the components of `spec` built on the meta device (no weights, no memory).
    Cached: the same object comes back for the same spec; the estimators leave it as they found it."""
    return BUILDERS[spec.family](spec, "meta")


def cpu_backbone(spec: ModelSpec, seed: int = 0) -> Backbone:
    """The same adapter over components with random weights on the CPU (`seed`): a small spec's real run, to check
    the meta counts against."""
    torch.manual_seed(seed)
    return BUILDERS[spec.family](spec, "cpu")


def meta_model(unet_config: dict = zeroscope.UNET_CONFIG, vae_config: dict | None = zeroscope.VAE_CONFIG,
               text_config: dict | None = zeroscope.TEXT_ENCODER_CONFIG,
               dtype: torch.dtype = torch.float16) -> UNet3DBackbone:
    """`meta_backbone` of the UNet3D with these component configs (default: ZeroScope's)."""
    return meta_backbone(unet3d_spec(unet_config, vae_config, text_config, dtype))


def unet3d_spec(unet_config: dict, vae_config: dict | None = None, text_config: dict | None = None,
                dtype: torch.dtype = torch.float16, text_tokens: int = 77) -> ModelSpec:
    return ModelSpec("unet3d", frozen(unet_config), frozen(vae_config), frozen(text_config),
                     frozen(zeroscope.SCHEDULER_CONFIG), dtype, text_tokens=text_tokens)


def text_width(model: Backbone) -> int:
    """The width of the text states the denoiser takes (UNet3D: cross_attention_dim; Wan: text_dim)."""
    return getattr(model.denoiser.config, TEXT_WIDTH_FIELD[model.family])


def latent_shape(model: Backbone, frames: int, height: int, width: int,
                 vae_scale: int = zeroscope.VAE_SCALE) -> tuple[int, ...]:
    """The latent (1, C, F', h, w) a run at `frames` x `height` x `width` pixels samples: the backbone's own
    layout and size rules; a backbone built without its VAE (the denoiser is all a pass needs) is a UNet3D with
    one latent frame per frame at `vae_scale` pixels per latent cell."""
    if model.vae is not None:
        model.check_size(frames, height, width)
        return model.latent_shape(frames, height, width)
    if model.family != "unet3d":
        raise ConfigError("a Wan model's latent shape needs its VAE config")
    if height % vae_scale or width % vae_scale:
        raise ConfigError(f"height and width must be multiples of {vae_scale}, got {height}x{width}")
    return 1, model.denoiser.config.in_channels, frames, height // vae_scale, width // vae_scale


__all__ = ["ModelSpec", "ZEROSCOPE", "WAN_1_3B", "TINY_WAN", "meta_backbone", "cpu_backbone", "meta_model", "unet3d_spec", "frozen", "text_width",
           "latent_shape"]
