"""Text-to-video samples of a Wan-family shapes model (an export of `motiontransfer train --family wan`), drawn
with diffusers' own `WanPipeline`, as a contact sheet: one row a prompt (every other frame), the prompt above it
with the attribute classifier's reading of the video, plus a JSON of the readings.

The prompts are captions of world clips the model never saw (`--world-seed`, not the training seed 0).

    OMP_NUM_THREADS=1 python benchmarks/wan_samples.py --model training/shapes-wan-wip \
        --output docs/results/shapes_wan_wip_t2v.png
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import cv2
import numpy as np
import torch

from motiontransfer.shapes import world
from motiontransfer.shapes.classifier import attribute_fidelity, classify_video
from motiontransfer.shapes.training_wan import text_length


def sample(pipe, prompt: str, seed: int, frames: int, size: int, steps: int, guidance: float) -> np.ndarray:
    """(F, H, W, 3) uint8 video of `prompt`, the model's text convention (padded to `text_length`)."""
    z = pipe.vae.config.z_dim
    scale = pipe.vae.config.scale_factor_spatial
    latents = torch.randn(1, z, frames, size // scale, size // scale, generator=torch.Generator().manual_seed(seed))
    video = pipe(prompt, negative_prompt="", height=size, width=size, num_frames=frames, latents=latents,
                 num_inference_steps=steps, guidance_scale=guidance, output_type="np",
                 max_sequence_length=text_length(pipe.tokenizer)).frames[0]            # (F, H, W, 3) in [0, 1]
    return (video * 255).round().clip(0, 255).astype(np.uint8)


def contact_sheet(rows: list[tuple[str, np.ndarray]], zoom: int = 2, every: int = 2) -> np.ndarray:
    """RGB image: per row a text strip, then the video's frames 0, every, 2 every, ... side by side."""
    parts = []
    for label, video in rows:
        strip = np.concatenate(list(video[::every]), axis=1)
        strip = cv2.resize(strip, None, fx=zoom, fy=zoom, interpolation=cv2.INTER_NEAREST)
        text = np.full((14, strip.shape[1], 3), 255, np.uint8)
        cv2.putText(text, label, (2, 11), cv2.FONT_HERSHEY_PLAIN, 0.8, (0, 0, 0), 1, cv2.LINE_AA)
        parts += [text, strip]
    return np.concatenate(parts, axis=0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, required=True, help="a WanPipeline folder with motiontransfer.json")
    p.add_argument("--output", type=Path, required=True, help="PNG; the readings go beside it as .json")
    p.add_argument("--prompts", type=int, default=8)
    p.add_argument("--world-seed", type=int, default=1234)
    p.add_argument("--seed", type=int, default=0, help="noise seed of the first prompt (then +1 a prompt)")
    p.add_argument("--steps", type=int, default=25)
    p.add_argument("--guidance-scale", type=float, default=5.0)
    args = p.parse_args()

    from diffusers import WanPipeline

    torch.set_num_threads(1)
    meta = json.loads((args.model / "motiontransfer.json").read_text())
    pipe = WanPipeline.from_pretrained(args.model, torch_dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    prompts = world.make_dataset(args.prompts, seed=args.world_seed, frames=2)["captions"]
    start = time.time()
    rows, records = [], []
    for i, prompt in enumerate(prompts):
        video = sample(pipe, prompt, args.seed + i, meta["frames"], meta["width"], args.steps, args.guidance_scale)
        seen = classify_video(video)
        fidelity = attribute_fidelity(video, prompt, attributes=seen)
        records.append({"prompt": prompt, "seed": args.seed + i, **{k: fidelity[k] for k in
                        ("colour_ok", "shape_ok", "background_ok", "predicted")}})
        rows.append((f"{prompt} | seen: {seen['colour']} {seen['shape']} on {seen['background']}", video))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(args.output), contact_sheet(rows)[..., ::-1])
    rates = {k: float(np.mean([r[k] for r in records])) for k in ("colour_ok", "shape_ok", "background_ok")}
    summary = {"model": str(args.model), "trained_steps": meta["trained_steps"], "steps": args.steps,
               "guidance_scale": args.guidance_scale, "seconds": round(time.time() - start, 1), "rates": rates,
               "samples": records}
    args.output.with_suffix(".json").write_text(json.dumps(summary, indent=2))
    print(json.dumps({k: summary[k] for k in ("trained_steps", "seconds", "rates")}))


if __name__ == "__main__":
    main()
