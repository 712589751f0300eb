"""ZeroScope's constants, in one place: `cerspense/zeroscope_v2_576w`, the paper's model.

Its component configs (from the checkpoint's `unet/`, `vae/`, `text_encoder/` and `scheduler/` folders) let the
memory estimates (`tools.memory`) and the GPU benchmark (benchmarks/gpu_zeroscope.py) build it without the
weights; the shapes model trains on its noise schedule, so the reference preset applies to both unchanged. Its
native size is the UNet3D loader's (`backbones.unet3d.KNOWN_SIZES`).
"""

from ..backbones.unet3d import KNOWN_SIZES

WIDTH, HEIGHT, FRAMES = KNOWN_SIZES["zeroscope_v2_576w"]      # pixels, pixels, frames
VAE_SCALE = 8                                                 # pixels per latent cell

# unet/config.json
UNET_CONFIG = {
    "sample_size": 32, "in_channels": 4, "out_channels": 4, "layers_per_block": 2,
    "block_out_channels": (320, 640, 1280, 1280),
    "down_block_types": ("CrossAttnDownBlock3D", "CrossAttnDownBlock3D", "CrossAttnDownBlock3D", "DownBlock3D"),
    "up_block_types": ("UpBlock3D", "CrossAttnUpBlock3D", "CrossAttnUpBlock3D", "CrossAttnUpBlock3D"),
    "cross_attention_dim": 1024, "attention_head_dim": 64, "norm_num_groups": 32, "norm_eps": 1e-5,
    "downsample_padding": 1, "mid_block_scale_factor": 1, "act_fn": "silu"}

# vae/config.json (the Stable Diffusion VAE)
VAE_CONFIG = {
    "in_channels": 3, "out_channels": 3, "latent_channels": 4, "block_out_channels": (128, 256, 512, 512),
    "down_block_types": ("DownEncoderBlock2D",) * 4, "up_block_types": ("UpDecoderBlock2D",) * 4,
    "layers_per_block": 2, "norm_num_groups": 32, "act_fn": "silu", "sample_size": 768, "scaling_factor": 0.18215}

# text_encoder/config.json: the OpenCLIP ViT-H/14 text tower, 23 of its 24 layers, as a CLIPTextModel
TEXT_ENCODER_CONFIG = {
    "vocab_size": 49408, "hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 23,
    "num_attention_heads": 16, "max_position_embeddings": 77, "hidden_act": "gelu", "projection_dim": 1024}

# scheduler/scheduler_config.json, the DDIM form
SCHEDULER_CONFIG = {  # ZeroScope's scheduler config, the DDIM form.
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "clip_sample": False,
    "set_alpha_to_one": False,
    "steps_offset": 1,
    "prediction_type": "epsilon",
    "timestep_spacing": "leading",
}
