"""What the guidance does, in one picture: source, result, and the result without guidance, every third frame.

    OMP_NUM_THREADS=1 python benchmarks/side_by_side.py [--model PATH] [--pairs 3] [--seed 0]
        [--option KEY=VALUE ...] --output docs/results/side_by_side.png

Pairs come from `shapes.report.transfer_pairs` at the model's own size (seed 0: the quality report's pairs).
For each pair three rows: the source clip, the transfer with the model's defaults (plus `--option`s), and the
same transfer with guidance switched off (`iterations=0`: same initial latent, same seed). Each row is labelled
with the velocity cosine and the mean centre error of its object against the source's true path; the numbers
also go to the JSON file next to the picture.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

import motiontransfer
from motiontransfer.cli import parse_key_value
from motiontransfer.models import model_defaults
from motiontransfer.shapes.report import transfer_pairs, world_light
from motiontransfer.shapes.tracking import object_track, trajectory_agreement


def labelled_row(frames: np.ndarray, label: str, scale: int, every: int = 3) -> np.ndarray:
    """Every `every`-th frame side by side, upscaled `scale` times (nearest), with `label` above them."""
    import cv2

    strip = np.concatenate(list(frames[::every]), axis=1)
    strip = cv2.resize(strip, None, fx=scale, fy=scale, interpolation=cv2.INTER_NEAREST)
    banner = np.full((22, strip.shape[1], 3), 255, np.uint8)
    cv2.putText(banner, label, (4, 15), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
    return np.concatenate([banner, strip], axis=0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None)
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0, help="pair seed (0: the quality report's pairs)")
    parser.add_argument("--option", action="append", default=[], type=parse_key_value, metavar="KEY=VALUE")
    parser.add_argument("--output", type=Path, required=True, help="the picture (.png); numbers go to .json")
    args = parser.parse_args()
    import cv2

    options = dict(args.option)
    defaults = model_defaults(args.model)
    scale = max(1, 128 // defaults.width)
    rows, numbers = [], []
    for i, (clip, target) in enumerate(transfer_pairs(args.pairs, args.seed, defaults.width, defaults.frames,
                                                             world_light(args.model))):
        rows.append(labelled_row(clip.frames, f"pair {i}: source ({clip.params.colour} {clip.params.shape})", scale))
        for name, extra in (("result", {}), ("no guidance", {"iterations": 0})):
            r = motiontransfer.transfer(clip.frames, target["prompt"], model=args.model, seed=i, output_dir=False,
                                        quiet=True, **(options | extra))
            agree = trajectory_agreement(clip.centres, object_track(r.frames))
            numbers.append({"pair": i, "row": name, "prompt": target["prompt"], **agree})
            rows.append(labelled_row(r.frames, f"{name}: {target['prompt']}  velocity cos "
                                     f"{agree['velocity_cosine']:.2f}, centre error {agree['centre_error']:.1f} px",
                                     scale))
            print(f"pair {i} {name:12s} cos {agree['velocity_cosine']:5.2f} err {agree['centre_error']:5.2f}",
                  flush=True)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(args.output), np.concatenate(rows, axis=0)[..., ::-1])
    args.output.with_suffix(".json").write_text(json.dumps(
        {"model": args.model, "seed": args.seed, "options": options, "rows": numbers}, indent=2, default=float) + "\n")


if __name__ == "__main__":
    main()
