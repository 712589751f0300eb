"""Wan2.1-T2V-1.3B's constants, in one place: `Wan-AI/Wan2.1-T2V-1.3B-Diffusers`, the DiT the issue targets.

Its component configs let the memory and FLOP counts (`tools.memory`, `tools.passes`, benchmarks/memory_wan.py)
build it on the meta device without the 17 GB of weights. Where each number comes from (the folder's own
`config.json` files, read through mirrors of the folder, checked against the Wan team's config and diffusers'
class defaults):

    transformer  `transformer/config.json` of the folder (mirrored at huggingface.co/callgg/t2v-decoder and
                 yitongl/sparse_quant_exp); the same numbers as the Wan team's `wan/configs/wan_t2v_1_3B.py`
                 (dim 1536 = 12 heads x 128, ffn_dim 8960, freq_dim 256, 30 layers, patch (1, 2, 2), qk_norm,
                 cross_attn_norm, eps 1e-6). diffusers' class defaults are the 14B's (40 heads, 40 layers, ffn
                 13824); text_dim 4096, in/out 16, rope_max_seq_len 1024 are the defaults and the folder's.
    vae          `vae/config.json` (huggingface.co/ai-toolkit/wan2.1-vae, `_name_or_path` the 1.3B folder; the
                 same as diffusers/Wan2.1-VAE): base_dim 96, z_dim 16, dim_mult [1, 2, 4, 4], num_res_blocks 2,
                 temperal_downsample [False, True, True], no attention scales. All equal to diffusers' class
                 defaults, latents_mean / latents_std included (not repeated here: they do not change bytes).
    text encoder `text_encoder/config.json` (huggingface.co/nvidia/AnyFlow-Wan2.1-T2V-1.3B-Diffusers, whose
                 `_name_or_path` is the 1.3B folder's text_encoder; the 14B folder's is the same): umt5-xxl's
                 encoder, d_model 4096, d_ff 10240 gated-gelu, 24 layers, 64 heads x d_kv 64, vocab 256384,
                 32 relative-position buckets up to distance 128, untied embeddings.
    scheduler    `scheduler/scheduler_config.json`: UniPC with flow sigmas, flow_prediction, flow_shift 3.0 at
                 480p (Wan2.1's diffusers folders; the VACE-14B folder's file, mirrored, lists the same).

Loaded as `backbones.wan.load` loads it: transformer and text encoder in the run's dtype (bf16 here), with the
modules diffusers keeps in fp32 (`_keep_in_fp32_modules`: RoPE tables, time embedder, modulation tables, the
cross-attention norm); the VAE in fp32.
"""

import torch

from ..backbones.wan import MAX_TEXT_TOKENS, NATIVE

WIDTH, HEIGHT, FRAMES, FPS = NATIVE           # WanPipeline's defaults: 832 x 480 pixels, 81 frames, 16 fps
DTYPE = torch.bfloat16                        # the dtype the Wan examples and peers run the 1.3B model in
TEXT_TOKENS = MAX_TEXT_TOKENS                 # prompts are padded to 512 tokens

# transformer/config.json
TRANSFORMER_CONFIG = {
    "patch_size": (1, 2, 2), "num_attention_heads": 12, "attention_head_dim": 128, "in_channels": 16,
    "out_channels": 16, "text_dim": 4096, "freq_dim": 256, "ffn_dim": 8960, "num_layers": 30,
    "cross_attn_norm": True, "qk_norm": "rms_norm_across_heads", "eps": 1e-6, "image_dim": None,
    "added_kv_proj_dim": None, "rope_max_seq_len": 1024}

# vae/config.json (AutoencoderKLWan)
VAE_CONFIG = {
    "base_dim": 96, "z_dim": 16, "dim_mult": (1, 2, 4, 4), "num_res_blocks": 2, "attn_scales": (),
    "temperal_downsample": (False, True, True), "dropout": 0.0}

# text_encoder/config.json (a UMT5EncoderModel)
TEXT_ENCODER_CONFIG = {
    "vocab_size": 256384, "d_model": 4096, "d_kv": 64, "d_ff": 10240, "num_layers": 24, "num_heads": 64,
    "relative_attention_num_buckets": 32, "relative_attention_max_distance": 128, "feed_forward_proj": "gated-gelu",
    "dense_act_fn": "gelu_new", "is_gated_act": True, "layer_norm_epsilon": 1e-6, "tie_word_embeddings": False,
    "pad_token_id": 0, "eos_token_id": 1, "decoder_start_token_id": 0}

# scheduler/scheduler_config.json (the fields that set the sigma grid)
SCHEDULER_CONFIG = {
    "_class_name": "UniPCMultistepScheduler", "num_train_timesteps": 1000, "prediction_type": "flow_prediction",
    "use_flow_sigmas": True, "flow_shift": 3.0, "solver_order": 2, "final_sigmas_type": "zero",
    "timestep_spacing": "linspace", "steps_offset": 0}
