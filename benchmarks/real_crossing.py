"""A real clip of something crossing a static scene, transferred: does the generated object cross the same way?

    apt-get install opencv-doc      # OpenCV's sample clips, among them vtest.avi (a static shot of pedestrians)
    OMP_NUM_THREADS=1 python benchmarks/real_crossing.py [--model PATH] [--clip PATH] [--region X,Y,W,H]
        [--start N] [--stride N] [--prompt TEXT ...] [--option KEY=VALUE ...] --output docs/results/real_crossing.png

The default window is one pedestrian of vtest.avi walking up and to the left across a 160x160 region of the
paved path (found
by `find_windows`: one moving blob in every frame, inside the middle 70% of the window, the longest way moved).
The source's path is measured on the real footage: the camera is static, so the median of the whole clip is the
empty scene, and the moving person is the largest blob that differs from it. The transfer (the model's defaults
plus `--option`s; prompt i with seed `--seed` + i) and the same transfer without guidance (`iterations=0`) are
tracked with
`shapes.tracking.object_track`; both are compared with the source's path (velocity cosine, centre error in the
model's pixels) and drawn under it, every third frame. Numbers also go to the JSON file next to the picture.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import cv2
import numpy as np

import motiontransfer
from motiontransfer.cli import parse_key_value
from motiontransfer.models import model_defaults
from motiontransfer.shapes.tracking import object_track, trajectory_agreement
from motiontransfer.video import read_video
from side_by_side import labelled_row

VTEST = Path("/usr/share/doc/opencv-doc/examples/data/vtest.avi")
# One pedestrian crossing, found by `find_windows` on vtest.avi (see the module doc).
DEFAULT_WINDOW = {"region": (448, 208, 160, 160), "start": 630, "stride": 2}
THRESHOLD = 40          # grey levels from the empty scene (any channel) that count as moving


def foreground(frames: np.ndarray, background: np.ndarray) -> np.ndarray:
    """(F, H, W) bool: pixels more than THRESHOLD from the empty scene in any channel, opened with a 3x3 square."""
    diff = np.abs(frames.astype(np.int16) - background.astype(np.int16)).max(axis=-1) > THRESHOLD
    kernel = np.ones((3, 3), np.uint8)
    return np.stack([cv2.morphologyEx(m.astype(np.uint8), cv2.MORPH_OPEN, kernel) for m in diff]).astype(bool)


def blob_centres(masks: np.ndarray, min_area: int = 20) -> np.ndarray | None:
    """(F, 2) centroids (x, y) of the one blob of at least `min_area` pixels in each mask, in the world's pixel
    convention (pixel (i, j) covers [j, j + 1] x [i, i + 1]); None where a frame has none or several."""
    out = []
    for m in masks:
        n, _, stats, centroids = cv2.connectedComponentsWithStats(m.astype(np.uint8))
        big = [i for i in range(1, n) if stats[i, cv2.CC_STAT_AREA] >= min_area]
        if len(big) != 1:
            return None
        out.append(centroids[big[0]] + 0.5)            # OpenCV's centroids are in pixel indices
    return np.array(out)


def source_path(video: np.ndarray, region, start: int, stride: int, frames: int) -> np.ndarray:
    """The crossing object's path (F, 2) in the region's pixels; `video` is the whole clip (N, H, W, 3)."""
    x, y, w, h = region
    background = np.median(video[::5, y:y + h, x:x + w], axis=0)
    picked = video[start:start + stride * frames:stride, y:y + h, x:x + w]
    centres = blob_centres(foreground(picked, background))
    if centres is None:
        raise SystemExit("the window does not hold exactly one moving object in every frame; pick another")
    return centres


def find_windows(video: np.ndarray, side: int, stride: int, frames: int = 16, step: int = 16) -> list[tuple]:
    """Windows (distance moved / side, x, y, start) holding one moving blob in every frame, inside the middle 70%,
    longest way moved first."""
    background = np.median(video[::5], axis=0)
    masks = foreground(video, background)
    found = []
    for t0 in range(0, len(video) - stride * frames, 6):
        idx = t0 + stride * np.arange(frames)
        for y in range(0, video.shape[1] - side + 1, step):
            for x in range(0, video.shape[2] - side + 1, step):
                centres = blob_centres(masks[idx, y:y + side, x:x + side])
                if centres is None or centres.min() < 0.15 * side or centres.max() > 0.85 * side:
                    continue
                found.append((float(np.linalg.norm(centres[-1] - centres[0]) / side), x, y, t0))
    return sorted(found, reverse=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None)
    parser.add_argument("--clip", type=Path, default=VTEST)
    parser.add_argument("--region", type=lambda s: tuple(int(v) for v in s.split(",")),
                        default=DEFAULT_WINDOW["region"], metavar="X,Y,W,H")
    parser.add_argument("--start", type=int, default=DEFAULT_WINDOW["start"])
    parser.add_argument("--stride", type=int, default=DEFAULT_WINDOW["stride"])
    parser.add_argument("--prompt", nargs="+", default=["a red circle on a gray background",
                                                         "a blue square on a white background"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--option", action="append", default=[], type=parse_key_value, metavar="KEY=VALUE")
    parser.add_argument("--output", type=Path, required=True, help="the picture (.png); numbers go to .json")
    args = parser.parse_args()
    if not args.clip.exists():
        raise SystemExit(f"{args.clip} is missing; on Debian: apt-get install opencv-doc")
    defaults = model_defaults(args.model)
    size, frames = defaults.width, defaults.frames
    video = read_video(args.clip).frames
    centres = source_path(video, args.region, args.start, args.stride, frames) * size / args.region[2]
    scale = max(1, 128 // size)
    x, y, w, h = args.region
    shown = video[args.start:args.start + args.stride * frames:args.stride, y:y + h, x:x + w]
    shown = np.stack([cv2.resize(f, (size, size), interpolation=cv2.INTER_AREA) for f in shown])
    rows = [labelled_row(shown, f"source: {args.clip.name} region {x},{y},{w},{h} from frame {args.start}, "
                                f"stride {args.stride}", scale)]
    numbers = []
    options = dict(args.option) | {"region": args.region, "start": args.start, "stride": args.stride,
                                   "frames": frames}
    for j, prompt in enumerate(args.prompt):
        for name, extra in (("result", {}), ("no guidance", {"iterations": 0})):
            r = motiontransfer.transfer(args.clip, prompt, model=args.model, seed=args.seed + j, output_dir=False,
                                        quiet=True, **(options | extra))
            agree = trajectory_agreement(centres, object_track(r.frames))
            numbers.append({"prompt": prompt, "seed": args.seed + j, "row": name, **agree})
            rows.append(labelled_row(r.frames, f"{name}: {prompt}  velocity cos {agree['velocity_cosine']:.2f}, "
                                               f"centre error {agree['centre_error']:.1f} px", scale))
            print(f"{prompt:40s} {name:12s} cos {agree['velocity_cosine']:5.2f} err {agree['centre_error']:5.2f}",
                  flush=True)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(args.output), np.concatenate(rows, axis=0)[..., ::-1])
    args.output.with_suffix(".json").write_text(json.dumps(
        {"model": args.model, "clip": str(args.clip), "window": options,
         "source_path": centres.tolist(), "rows": numbers}, indent=2, default=float) + "\n")


if __name__ == "__main__":
    main()
