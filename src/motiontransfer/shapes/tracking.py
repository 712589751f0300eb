"""Segmentation and tracking in the shapes world: where a video's object is, and how it moves.

Everything here judges frames from the outside, independently of the generator.

The background colour of a video is the per-channel median of its border pixels (all frames). A pixel's
*distance* is its Euclidean RGB distance to that colour; the video's *contrast* is the 90th percentile of the
distances at or above `FG_MIN_DISTANCE` (the object's colour against the background, robust to its
anti-aliased edge). A pixel is foreground when its distance exceeds

    threshold = max(FG_MIN_DISTANCE, FG_FRACTION * contrast)         (FG_FRACTION = 0.5)

i.e. when it is at least half covered by the object, as the world's ground-truth masks are, and never closer to
the background than 40 grey levels (noise). Per frame, the 8-connected components of the foreground are found;
the object is the largest. Its centre is the coverage-weighted centroid over the component grown by one pixel,
the coverage of a pixel being min(1, distance / contrast), so the centre estimates the object's area centroid,
as `world` defines it, below the pixel grid.

Coordinates are pixels in the convention of `motiontransfer.shapes.world`: x right, y down, pixel (row i,
column j) has its centre at (j + 0.5, i + 0.5). Frames are np.ndarray (F, H, W, 3) uint8 RGB throughout.
"""

from __future__ import annotations

import cv2
import numpy as np

from ..video import check_frames

# Segmentation. Distances are Euclidean in RGB, 0..441 grey levels.
FG_MIN_DISTANCE = 40.0              # a pixel nearer than this to the background is never foreground (noise)
FG_FRACTION = 0.5                   # foreground: distance > FG_FRACTION * contrast (pixel >= half covered)
CONTRAST_PERCENTILE = 90.0          # contrast: this percentile of the distances >= FG_MIN_DISTANCE
REFERENCE_AREA = 32 * 32            # px; the pixel thresholds below are for 32x32 and scale with frame area
MIN_COMPONENT_AREA = 3              # px at 32x32: smaller components are not counted as objects
MIN_OBJECT_AREA = 8                 # px at 32x32: the world's smallest object covers about 20 px

# Coherence and motion
ONE_OBJECT_SHARE = 0.8              # the largest component holds at least this share of the foreground
AREA_FACTOR = 3.0                   # object areas stay within this factor of their median
MOVES_MIN_PATH = 1.0                # px: a video whose object travels less than this in total is still
STILL_STEP = 0.25                   # px: a frame step shorter than this in both tracks is skipped (see below)


def _scaled_area(pixels_at_32: float, height: int, width: int) -> float:
    return pixels_at_32 * height * width / REFERENCE_AREA


def segment_object(frames: np.ndarray, *, min_area: float | None = None) -> dict:
    """The object in every frame of a plain-background video (method in the module docstring).

    frames (F, H, W, 3) uint8 -> {
        "centres": (F, 2) float64, (x, y) of the largest component, coverage-weighted; NaN where no foreground,
        "areas": (F,) int64, pixels in the largest component (0 where none),
        "components": (F,) int64, components of at least `min_area` px (default MIN_COMPONENT_AREA at 32x32,
            scaled with the frame area),
        "largest_share": (F,) float64, the largest component's share of the foreground pixels (0 where none),
        "masks": (F, H, W) bool, the largest component,
        "background": (3,) float64 RGB, "contrast": float, "threshold": float (RGB distances)}
    """
    frames = check_frames(frames)
    n, h, w, _ = frames.shape
    min_area = _scaled_area(MIN_COMPONENT_AREA, h, w) if min_area is None else min_area
    rgb = frames.astype(np.float32)
    border = np.concatenate([rgb[:, 0], rgb[:, -1], rgb[:, :, 0], rgb[:, :, -1]], axis=1).reshape(-1, 3)
    background = np.median(border, axis=0)
    distance = np.linalg.norm(rgb - background, axis=-1)                       # (F, H, W)
    strong = distance[distance >= FG_MIN_DISTANCE]
    contrast = float(np.percentile(strong, CONTRAST_PERCENTILE)) if strong.size else float("nan")
    threshold = max(FG_MIN_DISTANCE, FG_FRACTION * contrast) if strong.size else FG_MIN_DISTANCE
    foreground = distance > threshold
    coverage = np.clip(distance / contrast, 0.0, 1.0) if strong.size else np.zeros_like(distance)
    xs, ys = np.arange(w) + 0.5, np.arange(h) + 0.5
    grow = np.ones((3, 3), np.uint8)

    centres = np.full((n, 2), np.nan)
    areas = np.zeros(n, np.int64)
    components = np.zeros(n, np.int64)
    share = np.zeros(n)
    masks = np.zeros((n, h, w), bool)
    for f in range(n):
        count, labels, stats, _ = cv2.connectedComponentsWithStats(foreground[f].astype(np.uint8), connectivity=8)
        sizes = stats[1:, cv2.CC_STAT_AREA]                                    # label 0 is the background
        if not len(sizes):
            continue
        largest = 1 + int(sizes.argmax())
        mask = labels == largest
        masks[f] = mask
        areas[f] = sizes.max()
        components[f] = int((sizes >= min_area).sum())
        share[f] = sizes.max() / sizes.sum()
        weights = coverage[f] * cv2.dilate(mask.astype(np.uint8), grow).astype(bool)
        total = weights.sum()
        centres[f] = (weights.sum(axis=0) @ xs / total, weights.sum(axis=1) @ ys / total)
    return {"centres": centres, "areas": areas, "components": components, "largest_share": share,
            "masks": masks, "background": background.astype(np.float64), "contrast": contrast,
            "threshold": float(threshold)}


def object_track(frames: np.ndarray) -> np.ndarray:
    """The object's centre (x, y) per frame, (F, 2) float64 px; NaN where a frame has no foreground."""
    return segment_object(frames)["centres"]


def _steps(centres: np.ndarray) -> np.ndarray:
    """Frame-to-frame displacement lengths (F-1,) px; NaN where either end is missing."""
    return np.linalg.norm(np.diff(centres, axis=0), axis=1)


def coherence(frames: np.ndarray, *, segmentation: dict | None = None) -> dict:
    """Is the video one persistent, moving object? frames (F, H, W, 3) uint8 -> dict.

    "one_object": in every frame the largest component holds >= ONE_OBJECT_SHARE of the foreground and covers
        at least MIN_OBJECT_AREA px (at 32x32, scaled with frame area), and every frame's object area is within
        a factor AREA_FACTOR of the median area;
    "max_jump": the largest frame-to-frame centre displacement, px (steps with a missing centre are skipped;
        NaN with fewer than two centres);
    "path_length": the summed displacements, px; "moves": path_length > MOVES_MIN_PATH;
    "frames_ok": the share of frames passing the per-frame test; "min_share", "area_range" (min and max area
    over the median) for diagnosis. `segmentation` may pass a `segment_object` result.
    """
    seg = segmentation if segmentation is not None else segment_object(frames)
    h, w = seg["masks"].shape[1:]
    areas, share = seg["areas"].astype(np.float64), seg["largest_share"]
    frame_ok = (share >= ONE_OBJECT_SHARE) & (areas >= _scaled_area(MIN_OBJECT_AREA, h, w))
    median = float(np.median(areas))
    area_ok = median > 0 and bool(np.all((areas >= median / AREA_FACTOR) & (areas <= median * AREA_FACTOR)))
    steps = _steps(seg["centres"])
    finite = steps[np.isfinite(steps)]
    path = float(finite.sum())
    return {"one_object": bool(frame_ok.all() and area_ok),
            "max_jump": float(finite.max()) if finite.size else float("nan"),
            "path_length": path, "moves": path > MOVES_MIN_PATH,
            "frames_ok": float(frame_ok.mean()), "min_share": float(share.min()),
            "area_range": [float(areas.min() / median), float(areas.max() / median)] if median > 0 else [0.0, 0.0]}


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    if len(a) < 2 or a.std() == 0 or b.std() == 0:
        return float("nan")
    return float(np.corrcoef(a, b)[0, 1])


def trajectory_agreement(src_centres: np.ndarray, out_centres: np.ndarray, *, still: float = STILL_STEP) -> dict:
    """How well a track follows another: both (F, 2) px, NaN for missing frames -> dict.

    "velocity_cosine": the mean over frame steps k of cos(v_k, v~_k), v_k = c_(k+1) - c_k. A step where both
        displacements are shorter than `still` px is skipped (both agree nothing moves; their directions are
        noise); a step where exactly one is shorter counts 0 (no agreement in direction); a step with a missing
        centre is skipped. NaN when no step is left (neither track moves).
    "steps": how many steps entered the mean;
    "centre_error": the mean distance between the tracks, px, over frames where both exist;
    "corr_x", "corr_y": Pearson correlation of the x (y) coordinates over those frames (NaN for a constant one).
    """
    a, b = np.asarray(src_centres, np.float64), np.asarray(out_centres, np.float64)
    if a.shape != b.shape or a.ndim != 2 or a.shape[1] != 2:
        raise ValueError(f"tracks must both be (F, 2), got {a.shape} and {b.shape}")
    va, vb = np.diff(a, axis=0), np.diff(b, axis=0)
    na, nb = np.linalg.norm(va, axis=1), np.linalg.norm(vb, axis=1)
    known = np.isfinite(na) & np.isfinite(nb)
    moving_a, moving_b = na >= still, nb >= still
    used = known & (moving_a | moving_b)
    both = used & moving_a & moving_b
    cos = np.zeros(len(va))
    cos[both] = (va[both] * vb[both]).sum(axis=1) / (na[both] * nb[both])
    present = np.isfinite(a).all(axis=1) & np.isfinite(b).all(axis=1)
    error = np.linalg.norm(a[present] - b[present], axis=1)
    return {"velocity_cosine": float(cos[used].mean()) if used.any() else float("nan"),
            "steps": int(used.sum()),
            "centre_error": float(error.mean()) if error.size else float("nan"),
            "corr_x": _pearson(a[present, 0], b[present, 0]), "corr_y": _pearson(a[present, 1], b[present, 1])}


__all__ = ["coherence", "object_track", "segment_object", "trajectory_agreement"]
