"""Evaluation metrics: motion fidelity (paper Sec. 5, METHOD.md 2.7) and CLIP text fidelity (METHOD.md 2.8).

Motion fidelity
---------------
Points are tracked through both videos from a grid on frame 0 (`track_points`). For an original track tau
(n of them) and an edited track tau~ (m of them), with frame-to-frame displacements v_k = p_(k+1) - p_k
(k = 0 .. F-2, K = F-1 of them):

    corr(tau, tau~) = (1/K) sum_k c_k,   c_k = cos(v_k, v~_k)                        (paper, Sec. 5)
    score = 0.5 * [ (1/m) sum_tau~ max_tau corr  +  (1/n) sum_tau max_tau~ corr ]      in [-1, 1]

Near-static displacements (the reference divides by |v| unguarded and gets NaN). Here a displacement with
|v| < eps_px is *static*, and per step:

    both static          c_k = 1    (both videos agree that nothing moves there)
    exactly one static   c_k = 0    (neither agreement nor disagreement in direction)
    neither static       c_k = cos(v_k, v~_k)

so a static video scored against itself gives exactly 1, a static video against a moving one 0, and the
score is never NaN. `eps_px` is in the pixels of the tracked frames (default `STATIC_EPS_PX`, above LK's
jitter on still texture, below any motion worth scoring). A consequence: on the full grid, a still, textured
background matches itself with 1 in both videos and dominates the score, so to score an object's motion give
its first-frame mask or box (plain backgrounds give LK no texture, their points are dropped).

In code the correlation matrix is one matrix product. With u = v / |v| for moving steps and u = 0 for static
ones, and s = 1 for static steps and 0 otherwise:

    C[a, b] = (1/K) * ( einsum("akc,bkc->ab", u, u~) + einsum("ak,bk->ab", s, s~) )

(the second term counts the both-static steps; the exactly-one-static steps add 0 through u = 0).

The reference code scores one direction only: for every edited track, the best-matching original track,
averaged over the edited tracks, i.e. (1/m) sum_tau~ max_tau corr. It is returned as
`motion_fidelity_one_sided`, without the reference's identity-matrix subtraction and with guarded norms.

Text fidelity
-------------
`clip_text_similarity`: the mean over frames of the cosine between CLIP's image embedding of the frame and its
text embedding of the prompt. The raw cosine is returned (`clip_score`, in [-1, 1]); papers often report
100 x this value ("CLIP score").

Frames are np.ndarray (F, H, W, 3) uint8 RGB throughout. Point coordinates are float pixels, x to the right and
y down, in the convention of `motiontransfer.shapes.world`: the origin is the top-left corner of the top-left pixel,
so pixel (row i, column j) covers [j, j + 1] x [i, i + 1] and its centre is (j + 0.5, i + 0.5). (OpenCV and
CoTracker put pixel centres at integers; the conversion happens inside the trackers.)
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from ..errors import ConfigError, ModelError, MotionTransferError
from ..video import check_frames

logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_CLIP_MODEL",
    "STATIC_EPS_PX",
    "Tracks",
    "clip_text_similarity",
    "motion_fidelity",
    "query_grid",
    "score_files",
    "score_videos",
    "track_points",
]

TRACKERS = ("lk", "flow", "cotracker")
FLOW_FB_MAX_ERR = 2.0   # px at the working size; dense flow is smoother but less exact per point than LK
DEFAULT_GRID = 55                   # query points per side on frame 0, as in the reference (CoTracker, 55 x 55)
STATIC_EPS_PX = 0.1                 # px; a displacement shorter than this is "static" (see module docstring)
DEFAULT_CLIP_MODEL = "openai/clip-vit-base-patch32"

# Lucas-Kanade settings. Frames whose short side is below LK_MIN_SIDE are upsampled (bicubic) to it before
# tracking, so that small frames (32 x 32) still give LK enough pixels inside its window; coordinates are mapped
# back to the input's pixels. Window and pyramid depth scale with the (working) short side S:
#   winSize  = odd(round(S / 16)) clipped to [9, 31]      128 -> 9,  320 -> 21 (OpenCV's default)
#   maxLevel = floor(log2(S / 32)) clipped to [1, 4]        128 -> 2,  320 -> 3   (coarsest level >= 32 px)
LK_MIN_SIDE = 128                   # px, working short side at least this
LK_FB_MAX_ERR = 1.0                 # px at working resolution: forward-backward round-trip error allowed per step
LK_CRITERIA = (cv2.TERM_CRITERIA_COUNT | cv2.TERM_CRITERIA_EPS, 30, 0.01)

_CORR_CHUNK_BYTES = 128 * 2**20     # one block of correlation rows (float64); with temporaries about 3x this
_CLIP_BATCH = 16                    # frames per CLIP forward pass
_CLIP_CACHE: dict[tuple[str, str], tuple[object, object]] = {}


@dataclass
class Tracks:
    """Point tracks through one video.

    `xy` holds every query point; a track that the tracker lost keeps its last position for the remaining frames
    and has `valid` False. Only valid tracks enter `motion_fidelity`.
    """

    xy: np.ndarray                  # (N, F, 2) float32 pixels (x right, y down)
    valid: np.ndarray               # (N,) bool, kept tracks
    tracker: str = "unknown"        # which tracker made them ("lk", "cotracker", ...)
    grid: int | None = None         # query grid size per side, None for explicit query points

    @property
    def num_valid(self) -> int:
        return int(np.count_nonzero(self.valid))


# --------------------------------------------------------------------------------------------- inputs


def _check_grid(grid: int) -> int:
    if isinstance(grid, bool) or not isinstance(grid, (int, np.integer)) or grid < 1:
        raise ConfigError(f"grid must be a positive integer (query points per side), got {grid!r}")
    return int(grid)


def query_grid(height: int, width: int, grid: int = DEFAULT_GRID, *, mask=None, box=None) -> np.ndarray:
    """Query points on frame 0: the centres of a `grid` x `grid` tiling of the frame, (N, 2) float32 (x, y).

    mask: (H, W) bool, keeps the points that fall in a True pixel. box: (x0, y0, x1, y1) in pixel coordinates
    (the pixels' corners: the box of pixel columns c0..c1 and rows r0..r1 is (c0, r0, c1 + 1, r1 + 1)), keeps
    the points inside it. Both may be given (both must hold). Raises ConfigError if nothing is left.
    """
    grid = _check_grid(grid)
    xs = (np.arange(grid) + 0.5) * (width / grid)
    ys = (np.arange(grid) + 0.5) * (height / grid)
    gx, gy = np.meshgrid(xs, ys)                                       # (grid, grid), row-major: y then x
    pts = np.stack([gx.ravel(), gy.ravel()], axis=1).astype(np.float32)
    keep = np.ones(len(pts), dtype=bool)
    if mask is not None:
        mask = np.asarray(mask)
        if mask.shape != (height, width):
            raise ConfigError(f"mask must be (H, W) = ({height}, {width}) like the first frame, got {mask.shape}")
        rows = np.clip(np.floor(pts[:, 1]).astype(int), 0, height - 1)
        cols = np.clip(np.floor(pts[:, 0]).astype(int), 0, width - 1)
        keep &= mask.astype(bool)[rows, cols]
    if box is not None:
        x0, y0, x1, y1 = _check_box(box)
        keep &= (pts[:, 0] >= x0) & (pts[:, 0] <= x1) & (pts[:, 1] >= y0) & (pts[:, 1] <= y1)
    if not keep.any():
        raise ConfigError(
            f"no point of the {grid} x {grid} query grid lies inside the mask/box on the first frame; "
            "use a larger mask or box or a finer grid"
        )
    return pts[keep]


def _check_box(box) -> tuple[float, float, float, float]:
    try:
        x0, y0, x1, y1 = (float(v) for v in box)
    except (TypeError, ValueError):
        raise ConfigError(f"box must be four numbers (x0, y0, x1, y1) in pixels, got {box!r}") from None
    if not all(math.isfinite(v) for v in (x0, y0, x1, y1)) or x1 < x0 or y1 < y0:
        raise ConfigError(f"box must satisfy x0 <= x1 and y0 <= y1 (pixels), got {box!r}")
    return x0, y0, x1, y1


def _region_box(mask, box) -> tuple[float, float, float, float] | None:
    """The bounding box of a mask (intersected with `box` if both are given), or the box itself."""
    if mask is None:
        return None if box is None else _check_box(box)
    rows, cols = np.nonzero(np.asarray(mask, dtype=bool))
    if rows.size == 0:
        raise ConfigError("mask is empty on the first frame")
    x0, y0, x1, y1 = float(cols.min()), float(rows.min()), float(cols.max() + 1), float(rows.max() + 1)
    if box is not None:
        bx0, by0, bx1, by1 = _check_box(box)
        x0, y0, x1, y1 = max(x0, bx0), max(y0, by0), min(x1, bx1), min(y1, by1)
    return x0, y0, x1, y1


# --------------------------------------------------------------------------------------------- trackers


def track_points(
    frames: np.ndarray,
    points: np.ndarray | None = None,
    *,
    tracker: str = "lk",
    grid: int = DEFAULT_GRID,
    mask: np.ndarray | None = None,
    box=None,
    cotracker_checkpoint: str | Path | None = None,
) -> Tracks:
    """Track points from frame 0 through `frames` (F, H, W, 3) uint8 RGB.

    points: explicit query points (N, 2) (x, y) on frame 0; when given, `grid` is not used and `mask`/`box` must
    be None. Otherwise the query points are `query_grid(H, W, grid, mask=mask, box=box)`.
    tracker: "lk" (OpenCV pyramidal Lucas-Kanade, chained frame to frame with a forward-backward check), "flow"
    (dense DIS optical flow, chained, same check; for flat-coloured objects such as the shapes world) or
    "cotracker" (needs the `cotracker` package and `cotracker_checkpoint`).
    """
    frames = check_frames(frames)
    if tracker not in TRACKERS:
        raise ConfigError(f"unknown tracker {tracker!r}; choose one of {', '.join(TRACKERS)}")
    _, height, width, _ = frames.shape
    if points is not None:
        if mask is not None or box is not None:
            raise ConfigError("give either explicit query points or a mask/box for the query grid, not both")
        query = np.asarray(points, dtype=np.float32).reshape(-1, 2)
        used_grid = None
    else:
        query = query_grid(height, width, grid, mask=mask, box=box)
        used_grid = int(grid)
    if tracker == "lk":
        xy, valid = _track_lk(frames, query)
    elif tracker == "flow":
        xy, valid = _track_flow(frames, query)
    else:
        xy, valid = _track_cotracker(frames, query, cotracker_checkpoint)
    return Tracks(xy=xy, valid=valid, tracker=tracker, grid=used_grid)


def _lk_params(short_side: int) -> tuple[tuple[int, int], int]:
    win = int(np.clip(round(short_side / 16), 9, 31)) | 1
    levels = int(np.clip(math.floor(math.log2(max(short_side, 1) / 32)), 1, 4))
    return (win, win), levels


def _chain(frames: np.ndarray, query: np.ndarray, step) -> tuple[np.ndarray, np.ndarray]:
    """Tracks points from frame t-1 to t for t = 1 .. F-1 on grayscale frames (upsampled if small, see
    LK_MIN_SIDE). `step(gray_a, gray_b, p (n, 2), inside) -> (p_next (n, 2), ok (n,) bool)` moves the live
    points one frame in OpenCV's coordinates; a point not ok is dropped for good and holds its last position.
    """
    num_frames, height, width, _ = frames.shape
    scale = max(1.0, LK_MIN_SIDE / min(height, width))
    work_w, work_h = max(1, round(width * scale)), max(1, round(height * scale))
    sx, sy = work_w / width, work_h / height                  # exact factors after rounding the working size
    grays = []
    for frame in frames:
        gray = cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY)
        if (work_w, work_h) != (width, height):
            gray = cv2.resize(gray, (work_w, work_h), interpolation=cv2.INTER_CUBIC)
        grays.append(gray)

    # OpenCV's coordinates at the working size: pixel centres at integers, x_cv = x * sx - 0.5
    cur = np.empty_like(query)                                # (N, 2)
    cur[:, 0] = query[:, 0] * sx - 0.5
    cur[:, 1] = query[:, 1] * sy - 0.5

    def inside(p: np.ndarray) -> np.ndarray:                  # within the frame's outer pixel edges
        return (
            np.isfinite(p).all(axis=1)
            & (p[:, 0] >= -0.5) & (p[:, 0] <= work_w - 0.5) & (p[:, 1] >= -0.5) & (p[:, 1] <= work_h - 0.5)
        )

    alive = inside(cur)
    xy = np.empty((len(query), num_frames, 2), dtype=np.float32)   # (N, F, 2) input-pixel coordinates

    def store(t: int) -> None:
        xy[:, t, 0] = (cur[:, 0] + 0.5) / sx
        xy[:, t, 1] = (cur[:, 1] + 0.5) / sy

    store(0)
    for t in range(1, num_frames):
        idx = np.flatnonzero(alive)
        if idx.size:
            p1, ok = step(grays[t - 1], grays[t], np.ascontiguousarray(cur[idx]), inside)
            cur[idx[ok]] = p1[ok]
            alive[idx[~ok]] = False
        store(t)
    return xy, alive


def _track_lk(frames: np.ndarray, query: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pyramidal LK, chained; each step also tracks the new positions back to frame t-1, and a point is dropped
    when either pass reports status 0, the round trip misses its start by more than LK_FB_MAX_ERR, or it
    leaves the frame. Points in flat, textureless regions get status 0: LK needs texture."""
    win, levels = _lk_params(max(LK_MIN_SIDE, min(frames.shape[1:3])))
    lk = dict(winSize=win, maxLevel=levels, criteria=LK_CRITERIA)

    def step(a, b, p0, inside):
        p0 = p0.reshape(-1, 1, 2)
        p1, st_fwd, _ = cv2.calcOpticalFlowPyrLK(a, b, p0, None, **lk)
        p0_back, st_bwd, _ = cv2.calcOpticalFlowPyrLK(b, a, p1, None, **lk)
        p0, p1, p0_back = p0.reshape(-1, 2), p1.reshape(-1, 2), p0_back.reshape(-1, 2)
        with np.errstate(invalid="ignore"):
            round_trip = np.linalg.norm(p0_back - p0, axis=1)
            ok = (st_fwd.ravel() == 1) & (st_bwd.ravel() == 1) & (round_trip <= LK_FB_MAX_ERR) & inside(p1)
        return p1, ok

    return _chain(frames, query, step)


def _sample_flow(flow: np.ndarray, p: np.ndarray) -> np.ndarray:
    """Bilinear samples of a dense flow (H, W, 2) at points (n, 2) in OpenCV coordinates."""
    maps = p.reshape(1, -1, 2).astype(np.float32)
    return cv2.remap(flow, maps[..., 0], maps[..., 1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)[0]


def _track_flow(frames: np.ndarray, query: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Dense optical flow (OpenCV's DIS, variational refinement), chained, with the same forward-backward check
    as LK. The flow's smoothness term fills textureless regions from their edges, so points inside a flat-coloured
    object move with it and points on a plain background stay put: what LK cannot do (the shapes world)."""
    dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)

    def step(a, b, p0, inside):
        forward = dis.calc(a, b, None)
        backward = dis.calc(b, a, None)
        p1 = p0 + _sample_flow(forward, p0)
        p0_back = p1 + _sample_flow(backward, p1)
        ok = (np.linalg.norm(p0_back - p0, axis=1) <= FLOW_FB_MAX_ERR) & inside(p1)
        return p1, ok

    return _chain(frames, query, step)


def _track_cotracker(frames: np.ndarray, query: np.ndarray, checkpoint) -> tuple[np.ndarray, np.ndarray]:
    """CoTracker on the query points (queried at frame 0), like the reference. Tracks are all kept (the reference
    ignores CoTracker's visibility); only non-finite coordinates make a track invalid."""
    how = (
        "install it with `pip install git+https://github.com/facebookresearch/co-tracker`, download a checkpoint "
        "(e.g. scaled_offline.pth from its README) and pass its path with --cotracker-checkpoint "
        "(cotracker_checkpoint=...), or use the built-in tracker 'lk'"
    )
    try:
        from cotracker.predictor import CoTrackerPredictor
    except ImportError:
        raise MotionTransferError(
            f"tracker 'cotracker' needs the cotracker package, which is not installed: {how}"
        ) from None
    if checkpoint is None:
        raise MotionTransferError(f"tracker 'cotracker' needs a checkpoint file: {how}")
    if not Path(checkpoint).is_file():
        raise ModelError(f"CoTracker checkpoint {str(checkpoint)!r} does not exist; {how}")
    import torch

    predictor = CoTrackerPredictor(checkpoint=str(checkpoint)).eval()
    video = torch.from_numpy(frames).permute(0, 3, 1, 2)[None].float()           # (1, F, 3, H, W), 0..255
    # CoTracker's queries are (t, x, y) with pixel centres at integer coordinates
    queries = np.concatenate([np.zeros((len(query), 1), np.float32), query - 0.5], axis=1)
    with torch.no_grad():
        pred_tracks, _visibility = predictor(video, queries=torch.from_numpy(queries)[None])  # (1, F, N, 2)
    xy = pred_tracks[0].permute(1, 0, 2).cpu().numpy().astype(np.float32) + 0.5  # (N, F, 2)
    return xy, np.isfinite(xy).all(axis=(1, 2))


# --------------------------------------------------------------------------------------------- the score


def _unit_displacements(xy: np.ndarray, eps_px: float) -> tuple[np.ndarray, np.ndarray]:
    """(N, F, 2) tracks -> unit displacements u (N, K*2) with 0 for static steps, static flags s (N, K)."""
    disp = np.diff(xy.astype(np.float64), axis=1)                                # (N, K, 2)
    norm = np.linalg.norm(disp, axis=-1)                                         # (N, K)
    static = norm < eps_px
    unit = np.where(static[..., None], 0.0, disp / np.maximum(norm, eps_px)[..., None])
    return unit.reshape(len(xy), -1), static.astype(np.float64)


def _max_correlations(ua, sa, ub, sb, num_steps: int) -> tuple[np.ndarray, np.ndarray]:
    """Row and column maxima of C = (ua @ ub.T + sa @ sb.T) / K without holding all of C when it is large.

    Returns (best match in b for every a-track (n,), best match in a for every b-track (m,)).
    """
    n, m = len(ua), len(ub)
    rows = max(1, int(_CORR_CHUNK_BYTES // (8 * max(m, 1))))
    best_a = np.empty(n)
    best_b = np.full(m, -np.inf)
    for start in range(0, n, rows):
        stop = min(n, start + rows)
        # einsum("akc,bkc->ab") over unit displacements + einsum("ak,bk->ab") over static flags, as matmuls
        block = (ua[start:stop] @ ub.T + sa[start:stop] @ sb.T) / num_steps   # (rows, m)
        best_a[start:stop] = block.max(axis=1)
        np.maximum(best_b, block.max(axis=0), out=best_b)
    return best_a, best_b


def motion_fidelity(tracks_a: Tracks, tracks_b: Tracks, *, eps_px: float = STATIC_EPS_PX) -> dict:
    """The paper's motion-fidelity score between original tracks `tracks_a` and edited tracks `tracks_b`.

    Returns a dict with
      motion_fidelity            0.5 * (mean over edited of best original + mean over original of best edited)
      motion_fidelity_one_sided  mean over edited tracks of the best original track (the reference's direction)
      motion_fidelity_original_to_edited  the other half: mean over original tracks of the best edited track
      tracks_original, tracks_edited      how many valid tracks were scored
      tracker, grid, eps_px, frames       how they were made
    All scores are finite and in [-1, 1]. If either side has no valid track, the scores are 0.0 (no evidence)
    and a warning is logged. With a single frame there is no displacement: every pair counts as static-static
    and the scores are 1.0.
    """
    try:
        eps_ok = math.isfinite(float(eps_px)) and float(eps_px) > 0
    except (TypeError, ValueError):
        eps_ok = False
    if not eps_ok:
        raise ConfigError(f"eps_px must be a positive number of pixels, got {eps_px!r}")
    eps_px = float(eps_px)
    xa, xb = np.asarray(tracks_a.xy), np.asarray(tracks_b.xy)
    if xa.ndim != 3 or xa.shape[-1] != 2 or xb.ndim != 3 or xb.shape[-1] != 2:
        raise ValueError(f"tracks must be (N, F, 2), got {xa.shape} and {xb.shape}")
    if xa.shape[1] != xb.shape[1]:
        raise ConfigError(
            f"the two track sets cover different frame counts ({xa.shape[1]} and {xb.shape[1]}); "
            "track videos of equal length (score_videos trims to the shorter)"
        )
    # a track with a non-finite coordinate is never scored
    keep_a = np.asarray(tracks_a.valid, dtype=bool) & np.isfinite(xa).all(axis=(1, 2))
    keep_b = np.asarray(tracks_b.valid, dtype=bool) & np.isfinite(xb).all(axis=(1, 2))
    xa, xb = xa[keep_a], xb[keep_b]
    n, m, num_frames = len(xa), len(xb), xa.shape[1]
    result = {
        "tracks_original": int(n),
        "tracks_edited": int(m),
        "tracker": tracks_a.tracker if tracks_a.tracker == tracks_b.tracker
        else f"{tracks_a.tracker}/{tracks_b.tracker}",
        "grid": tracks_a.grid if tracks_a.grid == tracks_b.grid else [tracks_a.grid, tracks_b.grid],
        "eps_px": float(eps_px),
        "frames": int(num_frames),
    }
    if n == 0 or m == 0:
        logger.warning("motion fidelity: no valid tracks (original %d, edited %d); scoring 0.0", n, m)
        to_orig = to_edit = 0.0
    elif num_frames < 2:
        to_orig = to_edit = 1.0
    else:
        ua, sa = _unit_displacements(xa, eps_px)
        ub, sb = _unit_displacements(xb, eps_px)
        best_for_orig, best_for_edit = _max_correlations(ua, sa, ub, sb, num_frames - 1)
        to_edit = float(np.clip(best_for_orig.mean(), -1.0, 1.0))   # (1/n) sum_tau max_tau~ corr
        to_orig = float(np.clip(best_for_edit.mean(), -1.0, 1.0))   # (1/m) sum_tau~ max_tau corr
    result["motion_fidelity"] = 0.5 * (to_orig + to_edit)
    result["motion_fidelity_one_sided"] = to_orig
    result["motion_fidelity_original_to_edited"] = to_edit
    return result


def _match_size(edited: np.ndarray, height: int, width: int) -> np.ndarray:
    if edited.shape[1:3] == (height, width):
        return edited
    shrink = edited.shape[1] * edited.shape[2] > height * width
    interp = cv2.INTER_AREA if shrink else cv2.INTER_CUBIC
    return np.stack([cv2.resize(f, (width, height), interpolation=interp) for f in edited])


def score_videos(
    original: np.ndarray,
    edited: np.ndarray,
    *,
    tracker: str = "lk",
    grid: int = DEFAULT_GRID,
    mask: np.ndarray | None = None,
    box=None,
    cotracker_checkpoint: str | Path | None = None,
    eps_px: float = STATIC_EPS_PX,
) -> dict:
    """Motion fidelity of `edited` with respect to `original`, both (F, H, W, 3) uint8 RGB.

    The edited video is resized to the original's H x W (INTER_AREA to shrink, INTER_CUBIC to enlarge) and both
    are cut to the shorter frame count (reported as `frames`, with `frames_original` and `frames_edited`).

    mask (H, W bool) / box (x0, y0, x1, y1) refer to the original's first frame. The original's query points are
    the grid points inside them. The edited object may have another shape, so its exact mask does not carry
    over: the edited video's query points are the grid points inside the bounding box of the mask (or the box),
    which is where the edited object starts when the layout is kept, as in the reference (which uses the
    mask's box for both videos). Querying the edited video on the full grid instead would add every static
    background track to the edited side, which finds no match among the original's (moving) object tracks and
    pulls the edited-to-original half towards 0 (a square and a disc on the same path over a textured 64 px
    background: 0.53 that way, 0.95 with the box).
    """
    original, edited = check_frames(original, "original"), check_frames(edited, "edited")
    _, height, width, _ = original.shape
    edited = _match_size(edited, height, width)
    num_frames = min(len(original), len(edited))
    if len(original) != len(edited):
        logger.info("score_videos: frame counts differ (%d, %d); using the first %d",
                    len(original), len(edited), num_frames)
    start = time.perf_counter()
    kw = dict(tracker=tracker, grid=grid, cotracker_checkpoint=cotracker_checkpoint)
    tracks_original = track_points(original[:num_frames], mask=mask, box=box, **kw)
    tracks_edited = track_points(edited[:num_frames], box=_region_box(mask, box), **kw)
    result = motion_fidelity(tracks_original, tracks_edited, eps_px=eps_px)
    result.update(
        frames=int(num_frames),
        frames_original=int(len(original)),
        frames_edited=int(len(edited)),
        size=[int(height), int(width)],
        region="full" if mask is None and box is None else "mask" if mask is not None else "box",
        seconds=round(time.perf_counter() - start, 3),
    )
    return result


def score_files(original: str | Path, edited: str | Path, *, mask: str | Path | None = None,
                box: tuple[float, float, float, float] | None = None, tracker: str = "lk", grid: int = DEFAULT_GRID,
                cotracker_checkpoint: str | Path | None = None, output: str | Path | None = None,
                limits=None) -> dict:
    """`score_videos` of two video files or image folders (`motiontransfer score`). `mask` is an image of the
    original's first frame (white = the object), resized to the video's size when it differs; `output`, when
    given, also receives the result as JSON. The edited video is read first, then only as many frames of the
    original (within `limits`, a `config.InputLimits`)."""
    import json

    from ..video import atomic_write_text, read_video

    mask_array = None
    if mask is not None:
        image = cv2.imread(str(mask), cv2.IMREAD_GRAYSCALE)
        if image is None:
            raise MotionTransferError(f"cannot read the mask image {mask}")
        mask_array = image > 127
    edited_frames = read_video(edited, limits=limits).frames
    frames = read_video(original, frames=len(edited_frames), limits=limits, allow_fewer=True).frames
    if mask_array is not None and mask_array.shape != frames.shape[1:3]:
        mask_array = cv2.resize(mask_array.astype("uint8"), frames.shape[1:3][::-1],
                                interpolation=cv2.INTER_NEAREST) > 0
    result = score_videos(frames, edited_frames, tracker=tracker, grid=grid, mask=mask_array, box=box,
                          cotracker_checkpoint=cotracker_checkpoint)
    if output is not None:
        atomic_write_text(output, json.dumps(result, indent=2) + "\n")
    return result


# --------------------------------------------------------------------------------------------- text fidelity


def _load_clip(model: str, device: str):
    key = (str(model), str(device))
    if key not in _CLIP_CACHE:
        from transformers import CLIPModel, CLIPProcessor

        try:
            clip = CLIPModel.from_pretrained(str(model)).to(device).eval()
            processor = CLIPProcessor.from_pretrained(str(model))
        except (OSError, ValueError) as err:
            raise ModelError(
                f"cannot load the CLIP model {str(model)!r} ({type(err).__name__}: {err}). Without network access, "
                "pass a local folder holding a CLIPModel and its processor (config.json, weights, tokenizer and "
                "preprocessor files, e.g. written by save_pretrained) as the model"
            ) from err
        _CLIP_CACHE[key] = (clip, processor)
    return _CLIP_CACHE[key]


def clip_text_similarity(
    frames: np.ndarray, prompt: str, *, model: str | Path = DEFAULT_CLIP_MODEL, device: str = "cpu"
) -> dict:
    """Mean over frames of cos(CLIP image embedding of the frame, CLIP text embedding of `prompt`).

    Returns {"clip_score": raw cosine in [-1, 1] (not x100), "clip_score_per_frame": [...], "clip_model": model,
    "frames": F}. `model` is a hub id or a local folder; loaded models are cached per (model, device).
    """
    import torch

    frames = check_frames(frames)
    if not isinstance(prompt, str):
        raise ConfigError(f"prompt must be a string, got {type(prompt).__name__}")
    clip, processor = _load_clip(model, device)
    max_len = getattr(clip.config.text_config, "max_position_embeddings", 77)
    text = processor(text=[prompt], return_tensors="pt", padding=True, truncation=True, max_length=max_len)
    per_frame = []
    with torch.no_grad():
        for start in range(0, len(frames), _CLIP_BATCH):
            images = processor(images=list(frames[start:start + _CLIP_BATCH]), return_tensors="pt")
            out = clip(
                input_ids=text["input_ids"].to(device),
                attention_mask=text["attention_mask"].to(device),
                pixel_values=images["pixel_values"].to(device=device, dtype=clip.dtype),
            )
            img = torch.nn.functional.normalize(out.image_embeds.double(), dim=-1)   # (B, D)
            txt = torch.nn.functional.normalize(out.text_embeds.double(), dim=-1)    # (1, D)
            per_frame.extend((img @ txt.T).squeeze(1).clamp(-1.0, 1.0).cpu().tolist())
    return {
        "clip_score": float(np.mean(per_frame)),
        "clip_score_per_frame": [float(v) for v in per_frame],
        "clip_model": str(model),
        "frames": int(len(frames)),
    }
