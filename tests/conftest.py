"""Shared fixtures: tiny random checkpoints in the ZeroScope folder layout, written with `save_pretrained`
and loaded through the real loading path."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from motiontransfer.tools.zeroscope import SCHEDULER_CONFIG

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(1)

WORDS = ["a", "red", "green", "blue", "star", "circle", "square", "on", "black", "white", "background", "moving"]
SCHEDULER = SCHEDULER_CONFIG                    # ZeroScope's, as the shipped model's


def build_tiny_model(directory: Path, *, seed: int = 0, size: int = 32, frames: int = 4,
                     with_defaults: bool = True) -> Path:
    """A random text-to-video checkpoint: UNet3D (8, 16, 16) with ZeroScope's block types, VAE factor 4."""
    from diffusers import AutoencoderKL, DDIMScheduler, UNet3DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from motiontransfer.shapes.training import build_tokenizer

    torch.manual_seed(seed)
    tokenizer = build_tokenizer(directory / "tokenizer", max_tokens=8, words=WORDS)
    vocab = len(tokenizer)
    text = CLIPTextModel(CLIPTextConfig(vocab_size=vocab, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                        num_attention_heads=2, max_position_embeddings=8, bos_token_id=vocab - 2,
                                        eos_token_id=vocab - 1, pad_token_id=vocab - 1))
    unet = UNet3DConditionModel(sample_size=size // 4, block_out_channels=(8, 16, 16), layers_per_block=1,
                                down_block_types=("CrossAttnDownBlock3D", "CrossAttnDownBlock3D", "DownBlock3D"),
                                up_block_types=("UpBlock3D", "CrossAttnUpBlock3D", "CrossAttnUpBlock3D"),
                                norm_num_groups=4, cross_attention_dim=16, attention_head_dim=4)
    vae = AutoencoderKL(block_out_channels=(8, 8, 8), down_block_types=("DownEncoderBlock2D",) * 3,
                        up_block_types=("UpDecoderBlock2D",) * 3, latent_channels=4, norm_num_groups=4,
                        layers_per_block=1, sample_size=size)
    unet.save_pretrained(directory / "unet", safe_serialization=True)
    vae.save_pretrained(directory / "vae", safe_serialization=True)
    text.save_pretrained(directory / "text_encoder", safe_serialization=True)
    DDIMScheduler(**SCHEDULER).save_pretrained(directory / "scheduler")
    if with_defaults:
        (directory / "motiontransfer.json").write_text(json.dumps(
            {"width": size, "height": size, "frames": frames, "fps": 8.0, "negative_prompt": ""}))
    return directory


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


def build_tiny_wan_model(directory: Path, **options) -> Path:
    """`tools.tiny.build_tiny_wan` over the tests' words."""
    from motiontransfer.tools.tiny import build_tiny_wan

    return build_tiny_wan(directory, WORDS, **options)


@pytest.fixture(scope="session")
def tiny_wan(tmp_path_factory) -> Path:
    return build_tiny_wan_model(tmp_path_factory.mktemp("tiny-wan") / "model")


def moving_square(frames: int = 4, size: int = 32, colour=(255, 0, 0), background=(0, 0, 0)) -> np.ndarray:
    """(F, H, W, 3) uint8: a square moving right by 2 px a frame."""
    video = np.empty((frames, size, size, 3), np.uint8)
    video[:] = background
    for f in range(frames):
        x = 4 + 2 * f
        video[f, 10:20, x:x + 10] = colour
    return video


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    """A 4-frame 32x32 mp4 of a red square moving right (`moving_square`), for the command-line tests."""
    from motiontransfer.video import write_video

    path = tmp_path_factory.mktemp("source") / "square.mp4"
    write_video(path, moving_square(4, 32), 8.0)
    return path
