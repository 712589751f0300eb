"""FLOPs of the denoiser passes: the meta-device count equals a real CPU run's for either family, the pass kinds
relate as they should, the counts of the two H200 runs predict their measured speed-up, and the recipe's pass counts
are a real run's."""

import json
from pathlib import Path

import pytest
import torch
from diffusers import UNet3DConditionModel
from torch.nn.attention import SDPBackend, sdpa_kernel

import motiontransfer
from motiontransfer.backbones.base import ModelDefaults
from motiontransfer.backbones.unet3d import UNet3DBackbone
from motiontransfer.models import load_model
from motiontransfer.tools.meta import TINY_WAN, cpu_backbone
from motiontransfer.tools.passes import (count_pass_flops, pass_flops, predicted_flops, predicted_seconds_ratio,
                                         run_counts)

from conftest import moving_square
from test_memory import TINY_UNET

H200 = Path(__file__).parents[2] / "docs" / "results" / "gpu_zeroscope_h200.json"
FRAMES, SIZE = 4, 64          # pixels; latent (1, 4, 4, 8, 8)


def test_meta_count_equals_a_real_cpu_run_and_the_passes_relate():
    flops = pass_flops(TINY_UNET, FRAMES, SIZE, SIZE, torch.float32, activations="checkpoint")
    torch.manual_seed(0)
    unet = UNet3DConditionModel(**TINY_UNET).eval().requires_grad_(False)
    cpu = UNet3DBackbone(unet=unet, vae=None, text_encoder=None, tokenizer=None, scheduler_config={}, path=Path("cpu"),
                      identity="cpu", defaults=ModelDefaults(SIZE, SIZE, FRAMES), device=torch.device("cpu"),
                      dtype=torch.float32)
    with sdpa_kernel(SDPBackend.MATH):          # the meta device's attention; CPU's fused kernel is not counted
        assert count_pass_flops(cpu, FRAMES, SIZE, SIZE, activations="checkpoint") == flops
    assert flops["cfg_forward"] == 2 * flops["unet_forward"]
    assert 0 < flops["unet_truncated_forward"] < flops["unet_forward"]          # the last up-blocks are cut
    # frozen weights: backward computes input gradients only, about one forward's worth; checkpointing adds a
    # recomputation that stops once each layer's saved tensors are rebuilt, less than a truncated forward
    plain = flops["unet_backward"] - flops["recompute"]
    assert 0.8 < plain / flops["unet_truncated_forward"] < 2.0
    assert 0 < flops["recompute"] < flops["unet_truncated_forward"]


def test_prediction_weights_the_counts():
    flops = {"unet_forward": 2, "unet_truncated_forward": 1, "unet_backward": 3}
    a = {"unet_forward": 10, "unet_truncated_forward": 4, "unet_backward": 2}
    plain = {"unet_forward": 10, "unet_truncated_forward": 0, "unet_backward": 0}
    assert predicted_flops(a, flops) == 30 and predicted_flops({}, flops) == 0
    assert predicted_seconds_ratio(a, plain, flops) == pytest.approx(1.5)


def test_counts_predict_the_measured_h200_speed_up_within_15_percent():
    runs = {r["run"]: r for r in json.loads(H200.read_text())["runs"]}
    reference, default = runs["reference"], runs["default"]
    assert reference["options"]["activations"] == default["options"]["activations"] == "checkpoint"
    measured = reference["seconds"] / default["seconds"]                            # 2.75
    predicted = predicted_seconds_ratio(reference["counts"], default["counts"], activations="checkpoint")
    assert predicted == pytest.approx(measured, rel=0.15)


def test_wan_flops_on_meta_equal_a_real_cpu_run_and_the_passes_relate():
    flops = pass_flops(model=TINY_WAN, frames=9, height=32, width=32, activations="checkpoint")
    with sdpa_kernel(SDPBackend.MATH):
        cpu = count_pass_flops(cpu_backbone(TINY_WAN), 9, 32, 32, activations="checkpoint", text_tokens=8)
    assert cpu == flops
    assert flops["cfg_forward"] == 2 * flops["unet_forward"]                   # CFG as two calls
    assert 0 < flops["unet_truncated_forward"] < flops["unet_forward"]          # blocks.1 of 2 ends the pass
    assert 0 < flops["recompute"] < flops["unet_truncated_forward"]


def test_run_counts_are_the_passes_a_wan_run_makes(tiny_wan, tmp_path):
    video = moving_square(9, 32)
    opts = dict(model=str(tiny_wan), output_dir=False, quiet=True, fps=16, seed=0)
    model = load_model(str(tiny_wan), device="cpu")
    for index, changes in enumerate(({"steps": 6}, {"steps": 6, "reuse_every": 1, "iterations": 2})):
        opts["cache_dir"] = str(tmp_path / str(index))
        result = motiontransfer.transfer(video, "a green star", **opts, **changes)
        schedule = model.schedule(result.config.steps)
        assert run_counts(result.config, schedule) == result.counts
        again = motiontransfer.transfer(video, "a green star", **opts, **changes)          # from the cache
        assert run_counts(result.config, schedule, cached=True) == again.counts
    plain = motiontransfer.text_to_video("a red circle", model=str(tiny_wan), seed=0, steps=4)
    assert run_counts(plain.config, schedule, plain=True) == plain.counts
