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


def word_tokenizer(words: list[str], max_tokens: int):
    """A word-level tokenizer over `words` (pad 0, end of text 1, unknown 2, as T5's), built offline."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2} | {w: i + 3 for i, w in enumerate(words)}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    core.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", eos_token="</s>", unk_token="<unk>",
                                   model_max_length=max_tokens)


def build_tiny_wan_model(directory: Path, *, seed: int = 0, size: int = 32, frames: int = 9,
                         temporal_downsample: bool = True, with_defaults: bool = True) -> Path:
    """A random Wan2.1-layout checkpoint (`WanPipeline.save_pretrained`): a 2-block transformer of width 24 with
    patch (1, 2, 2), a Wan VAE with 4x spatial and (by default) 2x temporal compression, a 1-layer UMT5 encoder
    and a word-level tokenizer, UniPC with flow sigmas as the hub folders have it."""
    from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanPipeline, WanTransformer3DModel
    from transformers import UMT5Config, UMT5EncoderModel

    torch.manual_seed(seed)
    tokenizer = word_tokenizer(WORDS, max_tokens=8)
    text = UMT5EncoderModel(UMT5Config(vocab_size=len(tokenizer), d_model=16, d_kv=8, d_ff=32, num_layers=1,
                                       num_heads=2, relative_attention_num_buckets=8, pad_token_id=0,
                                       eos_token_id=1, decoder_start_token_id=0))
    transformer = WanTransformer3DModel(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12,
                                        in_channels=4, out_channels=4, text_dim=16, freq_dim=16, ffn_dim=32,
                                        num_layers=2, rope_max_seq_len=32)
    vae = AutoencoderKLWan(base_dim=8, z_dim=4, dim_mult=[1, 2, 2], num_res_blocks=1,
                           temperal_downsample=[False, temporal_downsample], latents_mean=[0.1, -0.2, 0.0, 0.3],
                           latents_std=[1.5, 0.8, 1.0, 1.2], scale_factor_spatial=4,
                           scale_factor_temporal=2 if temporal_downsample else 1)
    scheduler = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0,
                                        num_train_timesteps=1000)
    WanPipeline(tokenizer=tokenizer, text_encoder=text, transformer=transformer, vae=vae,
                scheduler=scheduler).save_pretrained(directory, safe_serialization=True)
    if with_defaults:
        (directory / "motiontransfer.json").write_text(json.dumps(
            {"width": size, "height": size, "frames": frames, "fps": 16.0, "negative_prompt": ""}))
    return directory


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
