"""Which method options suit a model: transfer settings compared on validation pairs of the shapes world.

    OMP_NUM_THREADS=1 python benchmarks/init_sweep.py [--model PATH] [--pairs 12] [--seed 1]
        [--setting NAME KEY=VALUE ...] ... [--json runs/sweep.json]

Pairs come from `shapes.report.transfer_pairs` (a source clip; a target prompt of another shape and colour on
the same background) with `--seed` (1 by default; the quality report uses seed 0, so the defaults chosen here
are not tuned on the pairs they are reported on). Each setting runs `motiontransfer.transfer` once per pair
(seed = pair index, the report's); the table gives, per setting, the mean velocity cosine against the source's
true centres, the mean centre error in pixels, and the shares of results with the target colour and shape (the
world's classifier), the seconds per video (the inversion is cached across settings of one step count), the
backward passes, and the shapes it missed. Pairs are drawn at the model's own frame size and length. Without
`--setting`: LF init at factors 4 and 2 against the unfiltered inverted latent (where the shipped model's
`init: inverted` came from). Values are YAML:
`--setting short guidance_window=[0,0.2] --setting slow "learning_rate=[0.0035,0.002]"`.
"""

import argparse
import collections
import json
from pathlib import Path

import numpy as np

import motiontransfer
from motiontransfer.cli import parse_key_value
from motiontransfer.models import model_defaults
from motiontransfer.shapes.classifier import classify_video
from motiontransfer.shapes.report import transfer_pairs, world_light
from motiontransfer.shapes.tracking import object_track, trajectory_agreement

DEFAULT_SETTINGS = {"lf4": {"init": "lf", "lf_factor": 4}, "lf2": {"init": "lf", "lf_factor": 2},
                    "inverted": {"init": "inverted"}}


def parse_setting(words: list[str]) -> tuple[str, dict]:
    """["name", "key=value", ...] -> ("name", {key: yaml(value)})."""
    try:
        return words[0], dict(parse_key_value(word) for word in words[1:])
    except argparse.ArgumentTypeError as e:
        raise SystemExit(f"--setting {words[0]}: {e}") from None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None)
    parser.add_argument("--pairs", type=int, default=12)
    parser.add_argument("--seed", type=int, default=1, help="pair seed (the quality report uses 0)")
    parser.add_argument("--setting", nargs="+", action="append", metavar="NAME KEY=VALUE",
                        help="a named setting (repeatable); an empty one is the model's defaults")
    parser.add_argument("--json", type=Path, default=None, help="write every pair's numbers here")
    args = parser.parse_args()
    settings = dict(parse_setting(s) for s in args.setting) if args.setting else DEFAULT_SETTINGS
    rows = {name: [] for name in settings}
    misses = {name: collections.Counter() for name in settings}
    defaults = model_defaults(args.model)       # pairs at the model's own frame size and length
    for i, (clip, target) in enumerate(transfer_pairs(args.pairs, args.seed, defaults.width, defaults.frames,
                                                             world_light(args.model))):
        for name, options in settings.items():
            r = motiontransfer.transfer(clip.frames, target["prompt"], model=args.model, seed=i, output_dir=False,
                                        quiet=True, **options)
            seen = classify_video(r.frames)
            agree = trajectory_agreement(clip.centres, object_track(r.frames))
            rows[name].append({"pair": i, "prompt": target["prompt"], "velocity_cosine": agree["velocity_cosine"],
                               "centre_error": agree["centre_error"], "colour_ok": seen["colour"] == target["colour"],
                               "shape_ok": seen["shape"] == target["shape"], "shape_seen": seen["shape"],
                               "seconds": sum(r.timings.values()), "unet_backward": r.counts["unet_backward"]})
            if seen["shape"] != target["shape"]:
                misses[name][f"{target['shape']}->{seen['shape']}"] += 1
            row = rows[name][-1]
            print(f"{i:3d} {name:12s} cos {row['velocity_cosine']:5.2f} err {row['centre_error']:5.2f} "
                  f"colour {int(row['colour_ok'])} shape {int(row['shape_ok'])} ({target['shape']} -> {seen['shape']}) "
                  f"{row['seconds']:.1f} s", flush=True)
    print(f"\n{args.pairs} pairs, seed {args.seed}")
    print("setting       velocity cos  centre error px  target colour  target shape  s / video  backward  "
          "shape misses")
    summary = {}
    for name, values in rows.items():
        v = {k: float(np.nanmean([r[k] for r in values])) for k in ("velocity_cosine", "centre_error", "colour_ok",
                                                                       "shape_ok", "seconds", "unet_backward")}
        summary[name] = v | {"options": settings[name], "misses": dict(misses[name])}
        missed = ", ".join(f"{k} {n}" for k, n in misses[name].most_common())
        print(f"{name:12s} {v['velocity_cosine']:13.2f} {v['centre_error']:16.2f} {100 * v['colour_ok']:13.0f}% "
              f"{100 * v['shape_ok']:12.0f}%  {v['seconds']:9.1f}  {v['unet_backward']:8.0f}  {missed}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"pairs": args.pairs, "seed": args.seed, "model": args.model,
                                         "summary": summary, "rows": rows}, indent=2, default=float) + "\n")


if __name__ == "__main__":
    main()
