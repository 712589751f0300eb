"""How well inversion then unguided sampling gives back the source's latent, per inversion solver and step count.

    OMP_NUM_THREADS=1 python benchmarks/flow_inversion.py [--model FOLDER] [--steps 10 25 50] [--json PATH]

The source is a clip of the shapes world at the model's size and frame count (seed 20000, a validation seed).
Its clean latent x0 is inverted with the source prompt (its caption) and no CFG, up to the first sampling step,
and then sampled back to the end with the same prompt and no guidance (one Euler step a step for a flow model, DDIM
for a UNet3D one). The error is ||x0_back - x0|| / ||x0||, and the mean absolute difference in 1/255 between the
frames decoded from x0_back and from x0 (the VAE's own error left out).
Without `--model`, a tiny random Wan checkpoint is built (`tools.tiny.build_tiny_wan`): random weights say how
the solvers compare on this code path, not what a trained model reconstructs.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
import torch

from motiontransfer.inversion import invert_latent
from motiontransfer.models import load_model
from motiontransfer.sampling import guided_sample
from motiontransfer.shapes import world
from motiontransfer.tools.tiny import build_tiny_wan


def reconstruct(model, frames: np.ndarray, prompt: str, steps: int, solver: str | None) -> dict:
    schedule = model.schedule(steps)
    x0 = model.encode_frames(frames)
    cond = model.encode_prompts([prompt])

    def predict(x, t):
        return model.predict(x, t, cond)

    x_T = invert_latent(predict, x0, schedule, steps, [0], solver=solver, progress=False)[0]
    back, _ = guided_sample(predict, x_T, schedule, progress=False)
    pixels, reference = (model.decode_latents(z).astype(np.float64) for z in (back, x0))
    return {"latent_error": float((back - x0).norm() / x0.norm()),
            "pixel_error": float(np.abs(pixels - reference).mean()),
            "passes": steps * (2 if solver == "midpoint" else 1) + steps}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="a model folder (default: a tiny random Wan checkpoint)")
    parser.add_argument("--steps", type=int, nargs="+", default=[10, 25, 50])
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args()
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.model or build_tiny_wan(Path(tmp) / "tiny-wan", world.vocabulary())
        model = load_model(str(folder), device="cpu", dtype="fp32")
        d = model.defaults
        clip = world.sample_clip(np.random.default_rng(20_000), size=d.width, frames=d.frames)
        solvers = ["euler", "midpoint"] if model.family == "wan" else [None]
        rows = []
        print(f"model {folder if args.model else 'tiny random Wan'} ({model.family}), {d.frames} frames of "
              f"{d.width}x{d.height}, prompt {clip.caption!r}")
        print(f"{'solver':>9} {'steps':>5} {'passes':>6} {'latent err':>11} {'pixels /255':>11}")
        for steps in args.steps:
            for solver in solvers:
                row = {"solver": solver or "ddim", "steps": steps} | reconstruct(model, clip.frames, clip.caption,
                                                                                 steps, solver)
                rows.append(row)
                print(f"{row['solver']:>9} {steps:>5} {row['passes']:>6} {row['latent_error']:>11.4f} "
                      f"{row['pixel_error']:>11.2f}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
