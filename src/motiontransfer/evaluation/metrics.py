"""Evaluation metrics: motion fidelity (paper Sec. 5, METHOD.md 2.7) and CLIP text fidelity (METHOD.md 2.8).

Motion fidelity
---------------
Points are tracked through both videos from a grid on frame 0 (`track_points`). For a track, v_k = p_(k+1) - p_k
is its displacement at step k (k = 0 .. F-2); a displacement shorter than `eps` (STATIC_EPS of the frame's short
side S unless `eps_px` is given) is *still*, and a tracker may mark a step *unreliable* (the flow tracker's
forward-backward check). For an original track a and an edited track b:

    corr(a, b) = sum_k c_k / #{k: a or b moves at k}        over the steps reliable in both, where
                 c_k = cos(v_k, v~_k) when both move, 0 when exactly one moves; steps where both are still are
                 skipped (0 when no step is left). The rule of `shapes.tracking.trajectory_agreement`.
    w(a, b)    = exp(-D^2 / (2 (POSITION_SIGMA * S)^2)),    D^2 = mean over frames of |p_a(t) - p~_b(t)|^2
    M(a, b)    = corr(a, b) * w(a, b)

A track *moves* when its reliable, not-still steps add up to MOVING_EXTENT * S or more. With the paper's two-sided,
Chamfer-like match, each half taken over the moving tracks of one video, the best match among all tracks of the
other:

    to_edited   = mean over moving original tracks a of  max over edited tracks b   of M(a, b)
    to_original = mean over moving edited tracks b   of  max over original tracks a of M(a, b)
    motion_fidelity = the mean of the halves that have a moving track, in [-1, 1];
                      1.0 when neither video has one (both agree that nothing moves).

`to_original` is the reference code's one direction (`motion_fidelity_one_sided`), without its identity-matrix
subtraction and with guarded norms. Three departures from the paper's plain form, each measured by the
calibration (`evaluation.calibration`, README "How far the motion-fidelity score can be trusted"):

- Still tracks do not count as evidence. In the plain form a still step in both tracks scores 1 and every track
  is averaged, so on the full grid the still background matches itself and dominates: a disc moving the wrong
  way scored 0.4, and an edit held still about 0.3. Here a held-still edit scores about 0.
- Where a track runs counts. The plain correlation compares displacements only, so the same motion mirrored
  left-right (a vertical path is unchanged) or shifted along its path scores as high as the right one; a
  transfer keeps the layout, and the position weight (POSITION_SIGMA = 0.1 of the short side, 3.2 px at 32x32)
  counts a match only where the two tracks run near each other.
- "Could not measure" is not a score: with fewer than `min_tracks` (MIN_TRACKS) valid tracks on either side,
  `motion_fidelity` is None and `reason` says why, in one line.

In code the correlations are matrix products over unit displacements u (0 for still or unreliable steps), the
reliability r and the still-and-reliable flags s of each step, in blocks of rows:

    corr = (u_a @ u_b.T) / (r_a @ r_b.T - s_a @ s_b.T)          (0 where the denominator is 0)

Trackers
--------
"flow" (the default, `DEFAULT_TRACKER`): dense optical flow, OpenCV's DIS (medium preset, refined down to the
full working size), on one channel per video. Every frame is resized so that its short side is WORK_SIDE px (area averaging to shrink, bicubic to
enlarge: a 32x32 clip and a 768x576 one are tracked at the same scale) and projected on the video's principal
colour axis (its direction of most variance in RGB: about the luminance for most footage, and the axis that
tells a yellow object from a white background, which grey levels barely do), stretched to 0..255. DIS fills
textureless regions from their edges, which drags a plain background along with the object beside it; a
static prior undoes that: where zero displacement explains frame t+1 around a pixel as well as the flow does
(Gaussian-weighted squared differences, sigma STATIC_PRIOR_SIGMA working px, within STATIC_PRIOR_TAU grey
levels), the flow there is zero. So a plain background stays still, and the inside of a flat-coloured object
farther than about two sigmas from its edge stays still too (nothing there shows the motion); its edges move.
Points are chained along the forward flow; a step whose forward-backward round trip misses by more than
FLOW_FB_MAX_ERR working px is unreliable (left out of every correlation, not the end of the track), a point
that leaves the frame stops there, and a track with fewer than MIN_RELIABLE_SHARE of its steps reliable is not
valid. These settings were chosen on the calibration's validation clips, apart from those it reports.
"lk": OpenCV's pyramidal Lucas-Kanade, chained, with a forward-backward check that ends a track; it needs
texture (flat objects give it nothing). "cotracker": the paper's tracker, where its package and weights are
installed (`cotracker_checkpoint`).

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
    "DEFAULT_GRID",
    "DEFAULT_TRACKER",
    "MIN_TRACKS",
    "Tracks",
    "clip_text_similarity",
    "motion_fidelity",
    "query_grid",
    "score_files",
    "score_videos",
    "track_points",
]

TRACKERS = ("flow", "lk", "cotracker")
DEFAULT_TRACKER = "flow"            # every front end scores with it (score, demo, ui, batch, bench, report)
DEFAULT_GRID = 55                   # query points per side on frame 0, as in the reference (CoTracker, 55 x 55)
DEFAULT_CLIP_MODEL = "openai/clip-vit-base-patch32"

# The score (module docstring). Lengths are fractions of the short side S of the frames scored.
STATIC_EPS = 0.002                  # a displacement shorter than this is still: 0.25 px at 128, 0.06 px at 32
MOVING_EXTENT = 0.02                # a track whose reliable moves add up to less than this is still: 0.64 px at 32
POSITION_SIGMA = 0.1                # the position weight's width: 3.2 px at 32, 12.8 px at 128
MIN_TRACKS = 10                     # fewer valid tracks than this on either side: not measured (None)

# The flow tracker (module docstring). Pixels at the working size.
WORK_SIDE = 128                     # px, the short side every video is tracked at
FLOW_FB_MAX_ERR = 2.0               # px: a step whose forward-backward round trip misses more is unreliable
MIN_RELIABLE_SHARE = 0.5            # a track with fewer reliable steps than this share is not valid
STATIC_PRIOR_SIGMA = 4.0            # px, the window of the static prior
STATIC_PRIOR_TAU = 4.0              # grey levels (RMS) of change that zero displacement may leave unexplained
_AXIS_SAMPLES = 50_000              # pixels sampled for a video's principal colour axis

# Lucas-Kanade settings. Frames whose short side is below LK_MIN_SIDE are upsampled (bicubic) to it before
# tracking, so that small frames (32 x 32) still give LK enough pixels inside its window; coordinates are mapped
# back to the input's pixels. Window and pyramid depth scale with the (working) short side S:
#   winSize  = odd(round(S / 16)) clipped to [9, 31]      128 -> 9,  320 -> 21 (OpenCV's default)
#   maxLevel = floor(log2(S / 32)) clipped to [1, 4]        128 -> 2,  320 -> 3   (coarsest level >= 32 px)
LK_MIN_SIDE = 128                   # px, working short side at least this
LK_FB_MAX_ERR = 1.0                 # px at working resolution: forward-backward round-trip error allowed per step
LK_CRITERIA = (cv2.TERM_CRITERIA_COUNT | cv2.TERM_CRITERIA_EPS, 30, 0.01)

_CORR_CHUNK_BYTES = 64 * 2**20      # one block of correlation rows (float64); with temporaries about 5x this
_CLIP_BATCH = 16                    # frames per CLIP forward pass
_CLIP_CACHE: dict[tuple[str, str], tuple[object, object]] = {}


@dataclass
class Tracks:
    """Point tracks through one video.

    `xy` holds every query point; a track that the tracker lost keeps its last position for the remaining frames.
    Only valid tracks enter `motion_fidelity`, and of those only their reliable steps.
    """

    xy: np.ndarray                  # (N, F, 2) float32 pixels (x right, y down)
    valid: np.ndarray               # (N,) bool, kept tracks
    tracker: str = "unknown"        # which tracker made them ("flow", "lk", "cotracker", ...)
    grid: int | None = None         # query grid size per side, None for explicit query points
    reliable: np.ndarray | None = None   # (N, F-1) bool, steps the tracker vouches for; None: every step
    size: tuple[int, int] | None = None  # (H, W) of the frames tracked: the scale of the score's lengths

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


def _resize(frames: np.ndarray, width: int, height: int) -> np.ndarray:
    """Every frame (F, H, W, C) to (height, width): area averaging to shrink, bicubic to enlarge."""
    if frames.shape[1:3] == (height, width):
        return frames
    shrink = frames.shape[1] * frames.shape[2] > height * width
    interp = cv2.INTER_AREA if shrink else cv2.INTER_CUBIC
    out = [cv2.resize(f, (width, height), interpolation=interp) for f in frames]
    return np.stack([o.reshape(height, width, *frames.shape[3:]) for o in out])


# --------------------------------------------------------------------------------------------- trackers


def track_points(
    frames: np.ndarray,
    points: np.ndarray | None = None,
    *,
    tracker: str = DEFAULT_TRACKER,
    grid: int = DEFAULT_GRID,
    mask: np.ndarray | None = None,
    box=None,
    cotracker_checkpoint: str | Path | None = None,
) -> Tracks:
    """Track points from frame 0 through `frames` (F, H, W, 3) uint8 RGB.

    points: explicit query points (N, 2) (x, y) on frame 0; when given, `grid` is not used and `mask`/`box` must
    be None. Otherwise the query points are `query_grid(H, W, grid, mask=mask, box=box)`.
    tracker: "flow" (dense DIS optical flow, chained, the default; module docstring), "lk" (OpenCV pyramidal
    Lucas-Kanade, chained frame to frame with a forward-backward check; needs texture) or "cotracker" (needs the
    `cotracker` package and `cotracker_checkpoint`).
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
    reliable = None
    if tracker == "lk":
        xy, valid = _track_lk(frames, query)
    elif tracker == "flow":
        xy, valid, reliable = _track_flow(frames, query)
    else:
        xy, valid = _track_cotracker(frames, query, cotracker_checkpoint)
    return Tracks(xy=xy, valid=valid, tracker=tracker, grid=used_grid, reliable=reliable, size=(height, width))


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


def principal_channel(frames: np.ndarray) -> np.ndarray:
    """(F, H, W, 3) uint8 -> (F, H, W) uint8: every pixel projected on the video's principal colour axis (the
    leading eigenvector of the covariance of its colours, oriented towards white), stretched to 0..255. A video
    of one colour gives zeros."""
    rgb = frames.astype(np.float32)
    pixels = rgb.reshape(-1, 3)
    sample = pixels[:: max(1, len(pixels) // _AXIS_SAMPLES)]
    mean = sample.mean(axis=0)
    _, vectors = np.linalg.eigh(np.cov((sample - mean).T.astype(np.float64)) + np.eye(3) * 1e-9)
    axis = vectors[:, -1] if vectors[:, -1].sum() >= 0 else -vectors[:, -1]
    projected = (rgb - mean) @ axis.astype(np.float32)                         # (F, H, W)
    lo, hi = float(projected.min()), float(projected.max())
    if hi - lo < 1e-3:
        return np.zeros(projected.shape, np.uint8)
    return np.clip((projected - lo) * (255.0 / (hi - lo)), 0, 255).astype(np.uint8)


def _static_prior(a: np.ndarray, b: np.ndarray, flow: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """`flow` (H, W, 2) from a to b with zero where zero displacement explains b around a pixel as well as the
    flow does, within STATIC_PRIOR_TAU grey levels (module docstring). `grid` (2, H, W): pixel coordinates."""
    a, b = a.astype(np.float32), b.astype(np.float32)
    warped = cv2.remap(b, grid[0] + flow[..., 0], grid[1] + flow[..., 1], cv2.INTER_LINEAR,
                       borderMode=cv2.BORDER_REPLICATE)
    unmoved = cv2.GaussianBlur((b - a) ** 2, (0, 0), STATIC_PRIOR_SIGMA)
    moved = cv2.GaussianBlur((warped - a) ** 2, (0, 0), STATIC_PRIOR_SIGMA)
    out = flow.copy()
    out[unmoved <= moved + STATIC_PRIOR_TAU ** 2] = 0.0
    return out


def _sample_flow(flow: np.ndarray, p: np.ndarray) -> np.ndarray:
    """Bilinear samples of a dense flow (H, W, 2) at points (n, 2) in OpenCV coordinates."""
    maps = p.reshape(1, -1, 2).astype(np.float32)
    return cv2.remap(flow, maps[..., 0], maps[..., 1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)[0]


def _track_flow(frames: np.ndarray, query: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The flow tracker (module docstring): (xy (N, F, 2) input px, valid (N,), reliable (N, F-1))."""
    num_frames, height, width, _ = frames.shape
    scale = WORK_SIDE / min(height, width)
    work_w, work_h = max(1, round(width * scale)), max(1, round(height * scale))
    sx, sy = work_w / width, work_h / height
    grays = principal_channel(_resize(frames, work_w, work_h))                # (F, h, w) uint8
    grid = np.stack(np.mgrid[0:work_h, 0:work_w][::-1]).astype(np.float32)    # (2, h, w): x, y
    dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
    dis.setFinestScale(0)                                     # the preset stops at half size: 3 px of drift in 15

    def flow(a, b):
        return _static_prior(a, b, dis.calc(a, b, None), grid)

    cur = np.stack([query[:, 0] * sx - 0.5, query[:, 1] * sy - 0.5], axis=1).astype(np.float32)  # OpenCV coords

    def inside(p: np.ndarray) -> np.ndarray:
        return (p[:, 0] >= -0.5) & (p[:, 0] <= work_w - 0.5) & (p[:, 1] >= -0.5) & (p[:, 1] <= work_h - 0.5)

    alive = inside(cur)
    reliable = np.zeros((len(query), max(num_frames - 1, 0)), bool)
    xy = np.empty((len(query), num_frames, 2), np.float32)
    xy[:, 0] = cur
    for t in range(1, num_frames):
        forward, backward = flow(grays[t - 1], grays[t]), flow(grays[t], grays[t - 1])
        moved = cur + _sample_flow(forward, cur)
        back = moved + _sample_flow(backward, moved)
        alive &= inside(moved)
        reliable[:, t - 1] = alive & (np.linalg.norm(back - cur, axis=1) <= FLOW_FB_MAX_ERR)
        cur = np.where(alive[:, None], moved, cur)
        xy[:, t] = cur
    xy[..., 0] = (xy[..., 0] + 0.5) / sx
    xy[..., 1] = (xy[..., 1] + 0.5) / sy
    valid = reliable.mean(axis=1) >= MIN_RELIABLE_SHARE if num_frames > 1 else alive.copy()
    return xy, valid, reliable


def _track_cotracker(frames: np.ndarray, query: np.ndarray, checkpoint) -> tuple[np.ndarray, np.ndarray]:
    """CoTracker on the query points (queried at frame 0), like the reference. Tracks are all kept (the reference
    ignores CoTracker's visibility); only non-finite coordinates make a track invalid."""
    how = (
        "install it with `pip install git+https://github.com/facebookresearch/co-tracker`, download a checkpoint "
        "(e.g. scaled_offline.pth from its README) and pass its path with --cotracker-checkpoint "
        "(cotracker_checkpoint=...), or use the built-in tracker 'flow'"
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


def _steps(xy: np.ndarray, reliable: np.ndarray, eps: float):
    """(N, F, 2) tracks and (N, K) reliable steps -> unit displacements u (N, K*2), 0 for still or unreliable
    steps; reliability r (N, K) and still-and-reliable flags s (N, K), float64."""
    disp = np.diff(xy, axis=1)                                                   # (N, K, 2)
    norm = np.linalg.norm(disp, axis=-1)                                         # (N, K)
    r = reliable.astype(np.float64)
    still = (norm < eps) * r
    unit = disp / np.maximum(norm, eps)[..., None] * ((1.0 - still) * r)[..., None]
    return unit.reshape(len(xy), -1), r, still


def _best_matches(a: tuple, b: tuple, sigma: float) -> tuple[np.ndarray, np.ndarray]:
    """Row and column maxima of M = corr * w (module docstring) without holding all of M when it is large.

    a, b: (xy (N, F, 2), u, r, s) of each side. Returns (best match in b for every a-track (n,), best match in a
    for every b-track (m,)).
    """
    xa, ua, ra, sa = a
    xb, ub, rb, sb = b
    n, m, num_frames = len(xa), len(xb), xa.shape[1]
    flat_b = xb.reshape(m, -1)
    sq_b = (flat_b ** 2).sum(axis=1)
    rows = max(1, int(_CORR_CHUNK_BYTES // (8 * max(m, 1))))
    best_a = np.empty(n)
    best_b = np.full(m, -np.inf)
    for start in range(0, n, rows):
        stop = min(n, start + rows)
        flat_a = xa[start:stop].reshape(stop - start, -1)
        steps = ra[start:stop] @ rb.T - sa[start:stop] @ sb.T                    # (rows, m) steps compared
        corr = np.divide(ua[start:stop] @ ub.T, steps, out=np.zeros_like(steps), where=steps > 0)
        dist2 = ((flat_a ** 2).sum(axis=1)[:, None] + sq_b[None] - 2.0 * flat_a @ flat_b.T) / num_frames
        block = corr * np.exp(-np.maximum(dist2, 0.0) / (2.0 * sigma ** 2))
        best_a[start:stop] = block.max(axis=1)
        np.maximum(best_b, block.max(axis=0), out=best_b)
    return best_a, best_b


def _frame_side(tracks_a: Tracks, tracks_b: Tracks, size) -> float:
    size = size if size is not None else tracks_a.size or tracks_b.size
    if size is None:
        raise ConfigError("motion_fidelity needs the frame size (H, W): pass size=, or tracks from track_points")
    return float(min(size))


def motion_fidelity(tracks_a: Tracks, tracks_b: Tracks, *, eps_px: float | None = None,
                    size: tuple[int, int] | None = None, min_tracks: int = MIN_TRACKS) -> dict:
    """The motion-fidelity score between original tracks `tracks_a` and edited tracks `tracks_b` (both over the
    same frames, in the pixels of frames of `size` (H, W), default the tracks' own; module docstring).

    Returns a dict with
      motion_fidelity            the two-sided score in [-1, 1], or None when either side has fewer than
                                 `min_tracks` valid tracks (then `reason` says so)
      motion_fidelity_one_sided  the edited half alone (the reference's direction), None without a moving
                                 edited track
      motion_fidelity_original_to_edited  the original half, None without a moving original track
      reason                     None, or one line on why there is no score
      tracks_original, tracks_edited      how many valid tracks were scored
      moving_original, moving_edited      how many of them move
      tracker, grid, eps_px, frames       how they were made
    The scores are never NaN. With a single frame nothing moves, and the score is 1.0.
    """
    side = _frame_side(tracks_a, tracks_b, size)
    if eps_px is None:
        eps_px = STATIC_EPS * side
    try:
        eps_ok = math.isfinite(float(eps_px)) and float(eps_px) > 0
    except (TypeError, ValueError):
        eps_ok = False
    if not eps_ok:
        raise ConfigError(f"eps_px must be a positive number of pixels, got {eps_px!r}")
    eps_px = float(eps_px)
    xa, xb = np.asarray(tracks_a.xy, np.float64), np.asarray(tracks_b.xy, np.float64)
    if xa.ndim != 3 or xa.shape[-1] != 2 or xb.ndim != 3 or xb.shape[-1] != 2:
        raise ValueError(f"tracks must be (N, F, 2), got {xa.shape} and {xb.shape}")
    if xa.shape[1] != xb.shape[1]:
        raise ConfigError(
            f"the two track sets cover different frame counts ({xa.shape[1]} and {xb.shape[1]}); "
            "track videos of equal length (score_videos trims to the shorter)"
        )
    sides = []
    for tracks, xy in ((tracks_a, xa), (tracks_b, xb)):
        keep = np.asarray(tracks.valid, dtype=bool) & np.isfinite(xy).all(axis=(1, 2))  # non-finite: never scored
        steps = (np.ones((len(xy), xy.shape[1] - 1), bool) if tracks.reliable is None
                 else np.asarray(tracks.reliable, dtype=bool))
        xy, steps = xy[keep], steps[keep]
        lengths = np.linalg.norm(np.diff(xy, axis=1), axis=-1)                  # (n, K)
        moved = np.where(steps & (lengths >= eps_px), lengths, 0.0).sum(axis=1)  # over the reliable steps
        sides.append((xy, steps, moved >= MOVING_EXTENT * side))
    (xa, steps_a, moving_a), (xb, steps_b, moving_b) = sides
    n, m, num_frames = len(xa), len(xb), xa.shape[1]
    result = {
        "motion_fidelity": None,
        "motion_fidelity_one_sided": None,
        "motion_fidelity_original_to_edited": None,
        "reason": None,
        "tracks_original": int(n),
        "tracks_edited": int(m),
        "moving_original": int(moving_a.sum()),
        "moving_edited": int(moving_b.sum()),
        "tracker": tracks_a.tracker if tracks_a.tracker == tracks_b.tracker
        else f"{tracks_a.tracker}/{tracks_b.tracker}",
        "grid": tracks_a.grid if tracks_a.grid == tracks_b.grid else [tracks_a.grid, tracks_b.grid],
        "eps_px": eps_px,
        "frames": int(num_frames),
    }
    if n < min_tracks or m < min_tracks:
        result["reason"] = (f"not measured: too few tracks survived ({n} in the original, {m} in the edit; "
                            f"{min_tracks} needed on each side)")
        logger.warning("motion fidelity %s", result["reason"])
        return result
    if num_frames < 2 or not (moving_a.any() or moving_b.any()):
        result.update(motion_fidelity=1.0, motion_fidelity_one_sided=1.0,
                      motion_fidelity_original_to_edited=1.0)      # neither video moves: they agree
        return result
    a = (xa, *_steps(xa, steps_a, eps_px))
    b = (xb, *_steps(xb, steps_b, eps_px))
    best_for_a, best_for_b = _best_matches(a, b, POSITION_SIGMA * side)
    halves = {}
    if moving_a.any():
        halves["motion_fidelity_original_to_edited"] = float(np.clip(best_for_a[moving_a].mean(), -1.0, 1.0))
    if moving_b.any():
        halves["motion_fidelity_one_sided"] = float(np.clip(best_for_b[moving_b].mean(), -1.0, 1.0))
    result.update(halves)
    result["motion_fidelity"] = float(np.mean(list(halves.values())))
    return result


def score_videos(
    original: np.ndarray,
    edited: np.ndarray,
    *,
    tracker: str = DEFAULT_TRACKER,
    grid: int = DEFAULT_GRID,
    mask: np.ndarray | None = None,
    box=None,
    cotracker_checkpoint: str | Path | None = None,
    eps_px: float | None = None,
) -> dict:
    """Motion fidelity of `edited` with respect to `original`, both (F, H, W, 3) uint8 RGB: the one scorer every
    front end calls (`motiontransfer score`, the demo, the UI, batch, bench and report), with these defaults.

    The edited video is resized to the original's H x W (INTER_AREA to shrink, INTER_CUBIC to enlarge) and both
    are cut to the shorter frame count (reported as `frames`, with `frames_original` and `frames_edited`).

    mask (H, W bool) / box (x0, y0, x1, y1) refer to the original's first frame. The original's query points are
    the grid points inside them. The edited object may have another shape, so its exact mask does not carry
    over: the edited video's query points are the grid points inside the bounding box of the mask (or the box),
    which is where the edited object starts when the layout is kept, as in the reference (which uses the
    mask's box for both videos). Without them the whole frame is scored; still tracks do not dilute the score
    (module docstring), so a region is only needed to single out one of several moving things.
    """
    original, edited = check_frames(original, "original"), check_frames(edited, "edited")
    _, height, width, _ = original.shape
    edited = _resize(edited, width, height)
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


PREVIEW_BLOCK_ERR = 8.0             # grey levels: the 99th percentile of |frame - its block means| of a preview


def native_frames(frames: np.ndarray) -> np.ndarray:
    """`frames` shrunk by the largest factor k (2 .. side / 16) that divides both sides and for which they are
    k x k blocks of one colour: the 99th percentile of their distance to the block means is at most
    PREVIEW_BLOCK_ERR (H.264 leaves about 3 on a preview; footage 40 or more). Other frames come back as they are."""
    num, height, width, _ = frames.shape
    sample = frames[:: max(1, num // 4)].astype(np.float32)
    for k in range(min(height, width) // 16, 1, -1):
        if height % k or width % k:
            continue
        blocks = sample.reshape(len(sample), height // k, k, width // k, k, 3).mean(axis=(2, 4))
        spread = np.abs(np.repeat(np.repeat(blocks, k, axis=1), k, axis=2) - sample)
        if np.percentile(spread, 99) <= PREVIEW_BLOCK_ERR:
            means = frames.reshape(num, height // k, k, width // k, k, 3).mean(axis=(2, 4))
            return np.clip(np.rint(means), 0, 255).astype(np.uint8)
    return frames


def score_files(original: str | Path, edited: str | Path, *, mask: str | Path | None = None,
                box: tuple[float, float, float, float] | None = None, tracker: str = DEFAULT_TRACKER,
                grid: int = DEFAULT_GRID, cotracker_checkpoint: str | Path | None = None,
                output: str | Path | None = None, limits=None) -> dict:
    """`score_videos` of two video files or image folders (`motiontransfer score`). `mask` is an image of the
    original's first frame (white = the object), resized to the video's size when it differs; `output`, when
    given, also receives the result as JSON. The edited video is read first, then only as many frames of the
    original (within `limits`, a `config.InputLimits`). A video that is an enlarged preview (`video.write_video`
    with `min_size`: every k x k block one colour, up to the codec's noise) is scored at its own size
    (`native_frames`), as the transfer that wrote it scored it."""
    import json

    from ..video import atomic_write_text, read_video

    mask_array = None
    if mask is not None:
        image = cv2.imread(str(mask), cv2.IMREAD_GRAYSCALE)
        if image is None:
            raise MotionTransferError(f"cannot read the mask image {mask}")
        mask_array = image > 127
    edited_frames = native_frames(read_video(edited, limits=limits).frames)
    frames = native_frames(read_video(original, frames=len(edited_frames), limits=limits, allow_fewer=True).frames)
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
