"""Does a model put the object where the prompt says it starts? (world version 4's position words)

    OMP_NUM_THREADS=1 python benchmarks/position_prompts.py --model PATH [--per-position 2] [--seed 0]
        [--json runs/positions.json]

For each of the nine places a caption can name (`world.describe_position`: "top left" ... "bottom right") it
generates `--per-position` videos from prompts like "a red circle from top left on a white background"
(shape, colour and background drawn from the world's plain-caption combinations, seed `--seed`), tracks the
object (`shapes.tracking.object_track`) and reads off where it is in the first frame. It prints how often that
is the named third of the frame (chance: 1 in 9) and the mean distance, in fractions of the frame, from the
centre of the named cell; and the same for the same prompts without the position phrase, whose objects may be
anywhere. A model trained without position words splits them into letters and is warned about them.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

import motiontransfer
from motiontransfer.shapes import world
from motiontransfer.shapes.tracking import object_track

PLACES = [(x, y) for y in (1 / 6, 1 / 2, 5 / 6) for x in (1 / 6, 1 / 2, 5 / 6)]     # the centres of the thirds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True)
    parser.add_argument("--per-position", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    rows = []
    for k, (cx, cy) in enumerate(PLACES):
        place = world.describe_position(cx, cy)
        for j in range(args.per_position):
            params = world.sample_params(rng)
            plain = world.plain_caption(params.colour, params.shape, params.background)
            placed = plain.replace(" on a ", f" from {place} on a ", 1)
            for name, prompt in (("with position", placed), ("without", plain)):
                r = motiontransfer.text_to_video(prompt, model=args.model, seed=args.seed + k * 100 + j, quiet=True)
                size = r.frames.shape[2]
                start = object_track(r.frames)[0] / size
                found = None if np.isnan(start).any() else world.describe_position(*start)
                distance = None if found is None else float(np.hypot(start[0] - cx, start[1] - cy))
                rows.append({"prompt": prompt, "named": place, "found": found, "distance": distance,
                             "kind": name})
                away = "" if distance is None else f"  ({distance:.2f} from the named cell's centre)"
                print(f"{name:13s} {prompt:60s} starts {found}{away}", flush=True)
    for name in ("with position", "without"):
        picked = [r for r in rows if r["kind"] == name]
        hits = np.mean([r["found"] == r["named"] for r in picked])
        dist = np.nanmean([np.nan if r["distance"] is None else r["distance"] for r in picked])
        print(f"{name:13s} in the named third: {hits:.0%} of {len(picked)}; mean distance from its centre {dist:.2f}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"model": args.model, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
