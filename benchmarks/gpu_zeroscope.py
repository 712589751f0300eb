"""Real GPU memory and time of a transfer with a ZeroScope-sized model whose weights are random.

The real weights cannot be downloaded here, but memory and time depend on the architecture, not on the values:
this script builds cerspense/zeroscope_v2_576w's UNet3D, VAE and text encoder from their configs with random
weights, saves them as an fp16 diffusers folder (the shipped shapes model's word-level tokenizer stands in for
OpenCLIP's, padded to 77 tokens), loads it through the package's own loading code and runs `transfer` on a
24-frame 576x320 clip of the shapes world: our default with activation checkpointing (what `--activations auto`
picks on CUDA), our default without it, `--preset reference`, then plain sampling (random initial latent, no
inversion, no guidance: what guidance costs over it). Per run it records the per-phase seconds,
the UNet pass counts and `torch.cuda.max_memory_allocated` per phase, to set beside the meta-device counts of
docs/memory.md (benchmarks/memory_zeroscope.py) for the same options. The output is not a picture of anything;
only its cost is measured. JSON is rewritten after every run, so a run cut short still leaves what finished.

    python benchmarks/gpu_zeroscope.py --output runs/gpu.json [--frames 24] [--runs default,none,reference,plain]
    python benchmarks/gpu_zeroscope.py --tiny --device cpu --output /tmp/gpu.json     # a check of the script
"""

from __future__ import annotations

import argparse
import contextlib
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from motiontransfer import __version__, pipeline
from motiontransfer.models import shipped_model_path
from motiontransfer.shapes import world
from motiontransfer.tools import zeroscope
from motiontransfer.tools.memory import GIB

RUNS = {   # name: transfer options
    "default": {"activations": "checkpoint"},
    "none": {"activations": "none"},
    "reference": {"preset": "reference", "activations": "checkpoint"},
    "plain": {"init": "random", "iterations": 0},          # plain sampling: no inversion, no guidance
}
TINY_UNET = dict(block_out_channels=(32, 32, 64, 64), attention_head_dim=8, norm_num_groups=8, cross_attention_dim=64)
TINY_VAE = dict(block_out_channels=(16, 16, 32, 32), norm_num_groups=8)
TINY_TEXT = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 projection_dim=64)


def build(directory: Path, device: str, *, tiny: bool, width: int, height: int, frames: int) -> Path:
    """Writes a random-weight checkpoint with ZeroScope's architecture (or a small one with `tiny`)."""
    from diffusers import AutoencoderKL, DDIMScheduler, UNet3DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(shipped_model_path(), subfolder="tokenizer", model_max_length=77)
    vocab = len(tokenizer)
    text_config = dict(zeroscope.TEXT_ENCODER_CONFIG, **(TINY_TEXT if tiny else {}))
    text_config.update(vocab_size=vocab, bos_token_id=vocab - 2, eos_token_id=vocab - 1, pad_token_id=vocab - 1)
    torch.manual_seed(0)
    with torch.device(device):
        unet = UNet3DConditionModel(**dict(zeroscope.UNET_CONFIG, **(TINY_UNET if tiny else {})))
        vae = AutoencoderKL(**dict(zeroscope.VAE_CONFIG, **(TINY_VAE if tiny else {})))
        text = CLIPTextModel(CLIPTextConfig(**text_config))
    for name, module in (("unet", unet), ("vae", vae), ("text_encoder", text)):
        module.to(torch.float16).save_pretrained(directory / name, safe_serialization=True)
    tokenizer.save_pretrained(directory / "tokenizer")
    DDIMScheduler(**zeroscope.SCHEDULER_CONFIG).save_pretrained(directory / "scheduler")
    (directory / "motiontransfer.json").write_text(json.dumps(
        {"width": width, "height": height, "frames": frames, "fps": 8.0, "negative_prompt": ""}))
    return directory


def trace_phase_peaks(peaks: dict[str, float]) -> None:
    """Makes every timed phase of the pipeline also record its own peak of allocated GPU memory (GiB) in `peaks`
    (the peak counter is reset when a phase starts)."""
    timed = pipeline.Timer.__call__

    @contextlib.contextmanager
    def traced(self, phase: str):
        torch.cuda.reset_peak_memory_stats()
        try:
            with timed(self, phase):
                yield
        finally:
            peaks[phase] = max(peaks.get(phase, 0.0), torch.cuda.max_memory_allocated() / GIB)

    pipeline.Timer.__call__ = traced


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", type=Path, default=Path("runs/gpu_zeroscope.json"))
    parser.add_argument("--frames", type=int, default=24)
    parser.add_argument("--runs", default=",".join(RUNS), help=f"some of {', '.join(RUNS)}")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--tiny", action="store_true", help="a small model of the same block types (script check)")
    args = parser.parse_args(argv)
    width, height = (128, 64) if args.tiny else (576, 320)
    cuda = args.device == "cuda"
    record = {"version": __version__, "torch": torch.__version__, "frames": args.frames, "size": [width, height],
              "device": torch.cuda.get_device_name() if cuda else args.device, "tiny": args.tiny, "runs": []}
    args.output.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        tic = time.perf_counter()
        model = build(Path(tmp) / "model", args.device, tiny=args.tiny, width=width, height=height,
                      frames=args.frames)
        record["build_s"] = time.perf_counter() - tic
        peaks: dict[str, float] = {}
        if cuda:
            trace_phase_peaks(peaks)
        clip = world.sample_clip(np.random.default_rng(0), size=width, frames=args.frames)
        for name in args.runs.split(","):
            options = dict(RUNS[name])
            peaks.clear()
            if cuda:
                torch.cuda.empty_cache()
            tic = time.perf_counter()
            r = pipeline.transfer(clip.frames, "a red star on a black background", output_dir=False, quiet=True, seed=0,
                         model=str(model), device=args.device, dtype="fp16" if cuda else "fp32", use_cache=False,
                         cache_dir=str(Path(tmp) / "cache"), **options)
            if cuda:
                torch.cuda.synchronize()
            seconds = time.perf_counter() - tic
            run = {"run": name, "options": options, "seconds": seconds, "timings_s": r.timings, "counts": r.counts,
                   "peak_gib": max(peaks.values()) if cuda else None, "phase_peaks_gib": dict(peaks)}
            record["runs"].append(run)
            args.output.write_text(json.dumps(record, indent=2))
            print(json.dumps(run), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
