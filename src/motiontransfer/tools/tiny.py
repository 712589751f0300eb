"""Tiny random checkpoints built with the real classes, for tests and benchmarks that need a model of a family
whose real weights cannot be fetched here (no hub at run time)."""

from __future__ import annotations

import json
from pathlib import Path

import torch


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


def build_tiny_wan(directory: Path, words: list[str], *, seed: int = 0, size: int = 32, frames: int = 9,
                   temporal_downsample: bool = True, with_defaults: bool = True) -> Path:
    """A random Wan2.1-layout checkpoint (`WanPipeline.save_pretrained`): a 2-block transformer of width 24 with
    patch (1, 2, 2), a Wan VAE with 4x spatial and (by default) 2x temporal compression, a 1-layer UMT5 encoder
    and a word-level tokenizer, UniPC with flow sigmas as the hub folders have it."""
    from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanPipeline, WanTransformer3DModel
    from transformers import UMT5Config, UMT5EncoderModel

    torch.manual_seed(seed)
    tokenizer = word_tokenizer(words, max_tokens=8)
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
