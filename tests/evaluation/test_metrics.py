import dataclasses
import importlib.util
import json
import math
import time

import cv2
import numpy as np
import pytest

from motiontransfer.evaluation import metrics
from motiontransfer.errors import ConfigError, ModelError, MotionTransferError
from motiontransfer.evaluation.metrics import (
    Tracks, clip_text_similarity, motion_fidelity, query_grid, score_videos, track_points,
)

GRID = 20  # small query grids keep the tests fast


# ------------------------------------------------------------------------------------------------- synthetic videos

def texture(rng, height, width, sigma=1.2, lo=40.0, hi=215.0):
    """Smoothed noise in [lo, hi], (H, W, 3) float32: enough texture for Lucas-Kanade."""
    noise = cv2.GaussianBlur(rng.uniform(0, 255, (height, width, 3)).astype(np.float32), (0, 0), sigma)
    noise = (noise - noise.min()) / (noise.max() - noise.min() + 1e-6)
    return (lo + (hi - lo) * noise).astype(np.float32)


def sprite(rng, size, shape):
    """A textured (size, size, 3) patch and its alpha: "square", "disc" or "diamond"."""
    yy, xx = np.mgrid[:size, :size] + 0.5 - size / 2
    alpha = {
        "square": np.ones((size, size)),
        "disc": np.hypot(xx, yy) <= size / 2,
        "diamond": np.abs(xx) + np.abs(yy) <= size / 2,
    }[shape].astype(np.float32)
    return texture(rng, size, size, sigma=1.0, lo=0.0, hi=255.0), alpha


def render(background, sprites, centres):
    """Composite sprites over a background at sub-pixel centres (F, S, 2) (x, y): (F, H, W, 3) uint8."""
    height, width, _ = background.shape
    frames = []
    for frame_centres in centres:
        image = background.copy()
        for (tex, alpha), (cx, cy) in zip(sprites, frame_centres):
            shift = np.float32([[1, 0, cx - (len(tex) - 1) / 2], [0, 1, cy - (len(tex) - 1) / 2]])
            tex_w = cv2.warpAffine(tex, shift, (width, height), flags=cv2.INTER_LINEAR)
            alpha_w = cv2.warpAffine(alpha, shift, (width, height), flags=cv2.INTER_LINEAR)[..., None]
            image = image * (1 - alpha_w) + tex_w * alpha_w
        frames.append(np.clip(np.rint(image), 0, 255).astype(np.uint8))
    return np.stack(frames)


def pan(rng, size, offsets):
    """A camera pan: crops of a larger texture at sub-pixel offsets (F, 2); every point moves by -offset."""
    big = texture(rng, size + 40, size + 40)
    frames = []
    for dx, dy in offsets:
        shift = np.float32([[1, 0, -20 - dx], [0, 1, -20 - dy]])
        crop = cv2.warpAffine(big, shift, (size, size), flags=cv2.INTER_LINEAR)
        frames.append(np.clip(np.rint(crop), 0, 255).astype(np.uint8))
    return np.stack(frames)


def wavy(frames, x0, y0, speed, amplitude, axis=0):
    """A trajectory (F, 2): steady motion along `axis`, a sine across it."""
    t = np.arange(frames)
    steady, across = speed * t, amplitude * np.sin(t / 2.5)
    dx, dy = (steady, across) if axis == 0 else (across, steady)
    return np.stack([x0 + dx, y0 + dy], axis=1)


def square_box(centre, half):
    return (centre[0] - half, centre[1] - half, centre[0] + half, centre[1] + half)


@pytest.fixture
def scene():
    """A 64 x 64, 14-frame scene: background, two sprites of different shape, two trajectories."""
    rng = np.random.default_rng(3)
    frames = 14
    return dict(
        background=texture(rng, 64, 64),
        square=sprite(rng, 18, "square"),
        disc=sprite(rng, 18, "disc"),
        path=wavy(frames, 14, 22, 2.5, 6, axis=0),
        other_path=wavy(frames, 14, 22, 2.0, 6, axis=1),
    )


def timed(label, fn, *args, **kwargs):
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    print(f"{label}: {time.perf_counter() - start:.3f} s")
    return out


SIDE = 100.0   # the frame side of hand-made tracks: the score's lengths are fractions of it


def make_tracks(*displacements, start=(10.0, 10.0), reliable=None):
    """Tracks from per-track displacement lists [(dx, dy), ...] (all the same length), in a 100 x 100 frame."""
    xy = [np.cumsum(np.vstack([start, d]), axis=0) for d in displacements]
    xy = np.asarray(xy, dtype=np.float32)
    return Tracks(xy=xy, valid=np.ones(len(xy), bool), tracker="test", grid=None, size=(100, 100),
                  reliable=None if reliable is None else np.asarray(reliable, bool))


def score(a, b, **kw):
    return motion_fidelity(a, b, min_tracks=1, **kw)["motion_fidelity"]


def weight(a, b):
    """The position weight of the first tracks of a and b."""
    d2 = np.mean(np.sum((a.xy[0].astype(np.float64) - b.xy[0]) ** 2, axis=1))
    return math.exp(-d2 / (2 * (metrics.POSITION_SIGMA * SIDE) ** 2))


def brute_force(tracks_a, tracks_b, eps, side=SIDE):
    """The documented rule, one pair and one step at a time: (to_original, to_edited) over the moving tracks."""
    def corr(p, q, ok):
        total, steps = 0.0, 0
        for v, w, good in zip(np.diff(p, axis=0), np.diff(q, axis=0), ok):
            nv, nw = np.linalg.norm(v), np.linalg.norm(w)
            if not good or (nv < eps and nw < eps):
                continue
            steps += 1
            if nv >= eps and nw >= eps:
                total += float(v @ w) / (nv * nw)
        weight = math.exp(-np.mean(np.sum((p - q) ** 2, axis=1)) / (2 * (metrics.POSITION_SIGMA * side) ** 2))
        return (total / steps if steps else 0.0) * weight

    def parts(t):
        ok = np.ones((len(t.xy), t.xy.shape[1] - 1), bool) if t.reliable is None else t.reliable
        return t.xy[t.valid].astype(np.float64), ok[t.valid]

    (a, ok_a), (b, ok_b) = parts(tracks_a), parts(tracks_b)
    c = np.array([[corr(p, q, oa & ob) for q, ob in zip(b, ok_b)] for p, oa in zip(a, ok_a)])
    def moving(x, ok):
        lengths = np.linalg.norm(np.diff(x, axis=1), axis=-1)
        return (lengths * ok * (lengths >= eps)).sum(axis=1) >= metrics.MOVING_EXTENT * side

    moving_a, moving_b = moving(a, ok_a), moving(b, ok_b)
    return c.max(axis=0)[moving_b].mean(), c.max(axis=1)[moving_a].mean()


# ------------------------------------------------------------------------------------------------- the score

def test_identical_tracks_score_one():
    tracks = make_tracks([(1, 0)] * 5, [(0, 0)] * 5, [(0.5, -2), (0, 0), (3, 1), (-1, 0), (0, 0)])
    result = motion_fidelity(tracks, tracks, min_tracks=1)
    assert result["motion_fidelity"] == pytest.approx(1.0)
    assert result["motion_fidelity_one_sided"] == pytest.approx(1.0)
    assert result["tracks_original"] == result["tracks_edited"] == 3
    assert result["moving_original"] == result["moving_edited"] == 2          # the still track is no evidence
    assert result["tracker"] == "test" and result["grid"] is None and result["reason"] is None


def test_still_steps_are_skipped_and_one_sided_stillness_counts_zero():
    still, right, left = make_tracks([(0, 0)] * 4), make_tracks([(1, 0)] * 4), make_tracks([(-1, 0)] * 4)
    assert score(still, still) == 1.0                     # nothing moves in either video: they agree
    assert score(still, right) == 0.0 and score(right, still) == 0.0      # held still against motion
    assert score(right, left) == pytest.approx(-weight(right, left))     # opposite, and drifting apart
    # a pause in both: skipped; jitter below eps counts as still
    paused_a = make_tracks([(0, 0), (0.02, 0), (1, 1), (2, 2)])
    paused_b = make_tracks([(0, 0.03), (0, 0), (3, 3), (1, 1)])
    assert score(paused_a, paused_b, eps_px=0.1) == pytest.approx(weight(paused_a, paused_b))
    # one step both still (skipped), one step one still (0), two steps perpendicular (0), one step along (1)
    mixed_c = make_tracks([(0, 0), (1, 0), (1, 0), (1, 0), (1, 0)])
    mixed_d = make_tracks([(0, 0), (0, 0), (0, 1), (0, 1), (1, 0)])
    assert score(mixed_c, mixed_d) == pytest.approx(0.25 * weight(mixed_c, mixed_d))


def test_position_weight_counts_where_a_track_runs():
    near = make_tracks([(1, 0)] * 4)
    sigma = metrics.POSITION_SIGMA * SIDE
    for offset in (0.0, 0.5 * sigma, sigma, 3 * sigma):
        away = make_tracks([(1, 0)] * 4, start=(10.0, 10.0 + offset))
        assert score(near, away) == pytest.approx(math.exp(-offset ** 2 / (2 * sigma ** 2)))
    # the same motion in another place is matched by the track that runs where the original runs
    both = make_tracks([(1, 0)] * 4, [(0, 1)] * 4, start=(10.0, 10.0))
    shifted = make_tracks([(0, 1)] * 4, start=(10.0, 10.0 + 3 * sigma))
    assert score(both, shifted) < 0.1


def test_still_tracks_do_not_dilute_the_score():
    """The plain form averaged every track: a still background matched itself and outvoted the object (20 still
    tracks of 22 would have scored an object moving the wrong way about 0.9)."""
    moving, backwards, still = [(1, 0.5)] * 5, [(-1, -0.5)] * 5, [[(0, 0)] * 5] * 20
    with_bg = make_tracks(moving, moving, *still, start=(20.0, 20.0))
    opposite_bg = make_tracks(backwards, backwards, *still, start=(20.0, 20.0))
    result = motion_fidelity(with_bg, opposite_bg, min_tracks=1)
    assert result["moving_original"] == result["moving_edited"] == 2
    assert result["motion_fidelity"] == 0.0          # the best an object can find is the still background: 0
    assert score(with_bg, with_bg) == pytest.approx(1.0)
    alone = make_tracks(moving, moving, start=(20.0, 20.0))
    assert score(alone, make_tracks(backwards, backwards, start=(20.0, 20.0))) < -0.5


def test_one_sided_uses_edited_to_original_direction():
    original = make_tracks([(1, 0)] * 4)
    edited = make_tracks([(1, 0)] * 4, [(-1, 0)] * 4)   # an extra, opposite motion in the edit, at the same place
    result = motion_fidelity(original, edited, min_tracks=1)
    assert result["motion_fidelity_original_to_edited"] == pytest.approx(1.0)   # each original track found
    backwards = weight(original, make_tracks([(-1, 0)] * 4))
    assert result["motion_fidelity_one_sided"] == pytest.approx((1 - backwards) / 2)   # mean of (1, -w) over edited
    assert result["motion_fidelity"] == pytest.approx((1 + (1 - backwards) / 2) / 2)


def test_unreliable_steps_are_left_out():
    original = make_tracks([(1, 0)] * 4)
    edited = make_tracks([(1, 0), (-1, 0), (1, 0), (1, 0)], reliable=[[True, False, True, True]])
    assert score(original, edited) < 1.0 - 1e-3                       # the position weight still sees the detour
    steady = make_tracks([(1, 0)] * 4, reliable=[[True, False, True, True]])
    assert score(original, steady) == pytest.approx(1.0)
    flipped = make_tracks([(1, 0), (-1, 0), (1, 0), (1, 0)])
    assert score(original, flipped) < score(original, edited)


def test_matches_brute_force_and_chunking(monkeypatch):
    rng = np.random.default_rng(0)
    def random_tracks(n):
        steps = rng.normal(0, 1, (n, 7, 2)) * (rng.random((n, 7, 1)) < 0.7)   # about 30% still steps
        xy = np.concatenate([rng.uniform(0, 50, (n, 1, 2)), steps], axis=1).cumsum(axis=1)
        return Tracks(xy=xy.astype(np.float32), valid=rng.random(n) < 0.9, reliable=rng.random((n, 7)) < 0.85,
                      size=(60, 50))
    a, b = random_tracks(37), random_tracks(23)
    to_orig, to_edit = brute_force(a, b, metrics.STATIC_EPS * 50, side=50)
    full = motion_fidelity(a, b)
    assert full["motion_fidelity_one_sided"] == pytest.approx(to_orig, abs=1e-5)
    assert full["motion_fidelity_original_to_edited"] == pytest.approx(to_edit, abs=1e-5)
    monkeypatch.setattr(metrics, "_CORR_CHUNK_BYTES", 8 * 23 * 3)                  # three rows per block
    chunked = motion_fidelity(a, b)
    for key in ("motion_fidelity", "motion_fidelity_one_sided", "motion_fidelity_original_to_edited"):
        assert chunked[key] == pytest.approx(full[key], abs=1e-12)


def test_large_grid_is_vectorised():
    rng = np.random.default_rng(1)
    xy = rng.normal(0, 1, (3025, 16, 2)).cumsum(axis=1).astype(np.float32)
    tracks = Tracks(xy=xy, valid=np.ones(3025, bool), size=(128, 128))
    result = timed("motion_fidelity 3025 x 3025 tracks", motion_fidelity, tracks, tracks)
    assert result["motion_fidelity"] == pytest.approx(1.0)


def test_too_few_tracks_is_not_measured_not_zero():
    good = make_tracks(*[[(1, 0)] * 3] * 12)
    nothing = Tracks(xy=good.xy, valid=np.zeros(12, bool), size=(100, 100))
    result = motion_fidelity(nothing, good)
    assert result["motion_fidelity"] is None and result["motion_fidelity_one_sided"] is None
    assert result["tracks_original"] == 0 and "too few tracks" in result["reason"]
    assert "\n" not in result["reason"] and json.loads(json.dumps(result))["motion_fidelity"] is None
    few = Tracks(xy=good.xy, valid=np.arange(12) < metrics.MIN_TRACKS - 1, size=(100, 100))
    assert motion_fidelity(good, few)["motion_fidelity"] is None
    enough = Tracks(xy=good.xy, valid=np.arange(12) < metrics.MIN_TRACKS, size=(100, 100))
    assert motion_fidelity(good, enough)["motion_fidelity"] == pytest.approx(1.0)


def test_never_nan_on_degenerate_tracks():
    good = make_tracks([(1, 0)] * 3, [(0, 0)] * 3)
    broken = Tracks(xy=good.xy.copy(), valid=np.ones(2, bool), size=(100, 100))
    broken.xy[0, 2] = np.nan                                           # a non-finite track is not scored
    result = motion_fidelity(broken, good, min_tracks=1)
    assert result["tracks_original"] == 1 and math.isfinite(result["motion_fidelity"])
    one_frame = Tracks(xy=good.xy[:, :1], valid=np.ones(2, bool), size=(100, 100))
    assert motion_fidelity(one_frame, one_frame, min_tracks=1)["motion_fidelity"] == 1.0
    never_reliable = make_tracks([(1, 0)] * 3, reliable=[[False] * 3])
    assert score(never_reliable, make_tracks([(1, 0)] * 3)) == 0.0      # no step to compare: no agreement


def test_bad_inputs_raise():
    a = make_tracks([(1, 0)] * 3)
    with pytest.raises(ConfigError, match="frame size"):
        motion_fidelity(Tracks(xy=a.xy, valid=a.valid), Tracks(xy=a.xy, valid=a.valid))
    with pytest.raises(ConfigError, match="frame counts"):
        motion_fidelity(a, make_tracks([(1, 0)] * 4))
    with pytest.raises(ConfigError, match="eps_px"):
        motion_fidelity(a, a, eps_px=0)
    frames = np.zeros((3, 32, 32, 3), np.uint8)
    with pytest.raises(ConfigError, match="unknown tracker"):
        track_points(frames, tracker="raft")
    with pytest.raises(ConfigError, match="grid"):
        track_points(frames, grid=0)
    with pytest.raises(ConfigError, match="not both"):
        track_points(frames, np.array([[3.0, 4.0]]), box=(0, 0, 10, 10))
    with pytest.raises(ValueError, match="uint8"):
        track_points(frames.astype(np.float32))


# ------------------------------------------------------------------------------------------------- trackers

def test_query_grid_mask_and_box():
    pts = query_grid(40, 60, 10)
    assert pts.shape == (100, 2) and pts.dtype == np.float32
    # cell centres in the world's convention: pixel (i, j) spans [j, j + 1] x [i, i + 1]
    assert pts[:, 0].min() == pytest.approx(3.0) and pts[:, 1].max() == pytest.approx(38.0)
    mask = np.zeros((40, 60), bool)
    mask[:20, :30] = True
    assert len(query_grid(40, 60, 10, mask=mask)) == 25
    inside = query_grid(40, 60, 10, box=(0, 0, 30, 20))
    assert len(inside) == 25 and (inside[:, 0] <= 30).all() and (inside[:, 1] <= 20).all()
    with pytest.raises(ConfigError, match="mask must be"):
        query_grid(40, 60, 10, mask=np.ones((10, 10), bool))
    with pytest.raises(ConfigError, match="no point"):
        query_grid(40, 60, 10, box=(0.1, 0.1, 0.2, 0.2))
    with pytest.raises(ConfigError, match="box"):
        query_grid(40, 60, 10, box=(5, 5, 1, 1))


def test_lk_follows_a_textured_sprite_at_128px():
    rng = np.random.default_rng(0)
    path = wavy(16, 30, 50, 3.3, 10)
    frames = render(texture(rng, 128, 128), [sprite(rng, 24, "square")], path[:, None])
    mask = np.zeros((128, 128), bool)
    cx, cy = np.rint(path[0]).astype(int)
    mask[cy - 10:cy + 11, cx - 10:cx + 11] = True
    tracks = timed("lk 128px 16 frames", track_points, frames, grid=40, mask=mask, tracker="lk")
    assert tracks.xy.shape == (tracks.valid.size, 16, 2) and tracks.xy.dtype == np.float32
    assert tracks.num_valid >= 0.6 * tracks.valid.size
    kept = tracks.xy[tracks.valid]
    error = np.linalg.norm((kept - kept[:, :1]) - (path - path[0]), axis=-1)
    print(f"median track error {np.median(error):.3f} px")
    assert np.median(error) < 0.5


def test_lk_upsamples_small_frames():
    rng = np.random.default_rng(1)
    offsets = np.stack([0.7 * np.arange(12), 0.3 * np.arange(12)], axis=1)
    frames = pan(rng, 32, offsets)
    tracks = track_points(frames, grid=8, tracker="lk")
    kept = tracks.xy[tracks.valid]
    assert len(kept) >= 20
    error = np.linalg.norm((kept - kept[:, :1]) + (offsets - offsets[0]), axis=-1)  # content moves by -offset
    assert np.median(error) < 0.3


def test_lk_drops_points_that_leave_the_frame():
    rng = np.random.default_rng(2)
    offsets = np.stack([3.0 * np.arange(12), np.zeros(12)], axis=1)
    tracks = track_points(pan(rng, 48, offsets), grid=10, tracker="lk")
    lost = ~tracks.valid
    assert lost.any() and tracks.valid.any()
    assert (tracks.xy[tracks.valid, :, 0] >= 0).all()
    assert np.isfinite(tracks.xy).all()                        # lost tracks hold their last position


@pytest.mark.skipif(importlib.util.find_spec("cotracker") is not None, reason="cotracker is installed")
def test_cotracker_missing_is_actionable():
    frames = np.zeros((4, 32, 32, 3), np.uint8)
    with pytest.raises(MotionTransferError, match="pip install") as info:
        track_points(frames, tracker="cotracker", cotracker_checkpoint="model.pth")
    assert "--cotracker-checkpoint" in str(info.value)


# ------------------------------------------------------------------------------------------------- video scores

def test_video_against_itself(scene):
    frames = render(scene["background"], [scene["square"]], scene["path"][:, None])
    result = timed("score_videos self (full grid)", score_videos, frames, frames, grid=GRID)
    assert result["motion_fidelity"] >= 0.99
    box = square_box(scene["path"][0], 9)
    result = score_videos(frames, frames, grid=GRID, box=box)
    assert result["motion_fidelity"] >= 0.99 and result["region"] == "box"
    for key in ("motion_fidelity", "motion_fidelity_one_sided", "tracks_original", "tracks_edited",
                "tracker", "grid", "frames"):
        assert key in result
    assert result["tracker"] == "flow" and result["grid"] == GRID and result["frames"] == 14


def test_time_reversal_scores_low():
    rng = np.random.default_rng(4)
    t = np.arange(14)
    offsets = np.stack([1.5 * t, 4 * np.sin(t / 3)], axis=1)   # every point moves (a camera pan)
    frames = pan(rng, 64, offsets)
    result = score_videos(frames, frames[::-1].copy(), grid=GRID)
    print("time reversal:", result["motion_fidelity"])
    assert result["motion_fidelity"] < 0.3
    assert score_videos(frames, frames, grid=GRID)["motion_fidelity"] >= 0.99


def test_static_video_scores_documented_value():
    rng = np.random.default_rng(5)
    still = np.repeat(np.clip(texture(rng, 48, 48), 0, 255).astype(np.uint8)[None], 12, axis=0)
    result = score_videos(still, still, grid=GRID)
    assert result["motion_fidelity"] == 1.0 and result["motion_fidelity_one_sided"] == 1.0
    moving = pan(rng, 48, np.stack([1.2 * np.arange(12), np.zeros(12)], axis=1))
    result = score_videos(still, moving, grid=GRID)
    assert math.isfinite(result["motion_fidelity"]) and abs(result["motion_fidelity"]) < 0.05


def test_shape_change_scores_high_and_trajectory_change_low(scene):
    square = render(scene["background"], [scene["square"]], scene["path"][:, None])
    disc = render(scene["background"], [scene["disc"]], scene["path"][:, None])
    elsewhere = render(scene["background"], [scene["square"]], scene["other_path"][:, None])
    box = square_box(scene["path"][0], 9)
    same_motion = timed("score_videos box", score_videos, square, disc, grid=GRID, box=box)
    other_motion = score_videos(square, elsewhere, grid=GRID, box=box)
    print("same trajectory, other shape:", same_motion["motion_fidelity"])
    print("other trajectory, same shape:", other_motion["motion_fidelity"])
    assert same_motion["motion_fidelity"] > 0.7
    assert other_motion["motion_fidelity"] <= same_motion["motion_fidelity"] - 0.3


def test_mask_selects_original_and_its_box_the_edit(scene):
    square = render(scene["background"], [scene["square"]], scene["path"][:, None])
    disc = render(scene["background"], [scene["disc"]], scene["path"][:, None])
    yy, xx = np.mgrid[:64, :64]
    cx, cy = scene["path"][0]
    mask = np.hypot(xx - cx, yy - cy) <= 9
    result = score_videos(square, disc, grid=GRID, mask=mask)
    assert result["region"] == "mask" and result["motion_fidelity"] > 0.7
    assert result["tracks_original"] < result["tracks_edited"] + 5   # the edit is queried on the mask's box


def test_extra_motion_separates_one_sided_from_two_sided(scene):
    original = render(scene["background"], [scene["square"]], scene["path"][:, None])
    extra = wavy(14, 50, 50, -2.5, 3)                                  # a second object moving the other way
    edited = render(scene["background"], [scene["square"], scene["disc"]],
                    np.stack([scene["path"], extra], axis=1))
    result = score_videos(original, edited, grid=GRID)
    print("extra motion:", {k: round(v, 3) for k, v in result.items() if k.startswith("motion")})
    assert result["motion_fidelity_one_sided"] < result["motion_fidelity"] - 0.02
    assert result["motion_fidelity_original_to_edited"] > result["motion_fidelity_one_sided"]


def test_never_nan_on_noise_and_single_frames():
    rng = np.random.default_rng(6)
    noise_a = rng.integers(0, 256, (12, 48, 48, 3), dtype=np.uint8)
    noise_b = rng.integers(0, 256, (12, 48, 48, 3), dtype=np.uint8)
    for result in (score_videos(noise_a, noise_b, grid=GRID), score_videos(noise_a, noise_a, grid=GRID)):
        for key in ("motion_fidelity", "motion_fidelity_one_sided"):
            assert math.isfinite(result[key]) and -1.0 <= result[key] <= 1.0
    single = noise_a[:1]
    result = score_videos(single, single.copy(), grid=GRID)
    assert result["motion_fidelity"] == 1.0 and result["frames"] == 1
    flat = np.zeros((8, 40, 40, 3), np.uint8)
    result = score_videos(flat, flat, grid=GRID)
    assert math.isfinite(result["motion_fidelity"])


def test_resizes_edit_and_trims_to_shorter(scene):
    frames = render(scene["background"], [scene["square"]], scene["path"][:, None])
    bigger = np.stack([cv2.resize(f, (128, 128), interpolation=cv2.INTER_CUBIC) for f in frames])
    result = score_videos(frames[:12], bigger, grid=GRID)
    assert result["frames"] == 12 and result["frames_original"] == 12 and result["frames_edited"] == 14
    assert result["size"] == [64, 64]
    assert result["motion_fidelity"] > 0.9


# ------------------------------------------------------------------------------------------------- CLIP

@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    """A random CLIP with a word-level BPE vocabulary, saved like a hub checkpoint."""
    torch = pytest.importorskip("torch")
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer

    folder = tmp_path_factory.mktemp("tiny_clip")
    vocab, merges = {"<|startoftext|>": 0, "<|endoftext|>": 1}, ["#version: 0.2"]
    for word in ("a", "red", "blue", "circle", "square", "photo", "of"):
        pieces = list(word[:-1]) + [word[-1] + "</w>"]
        for piece in pieces:
            vocab.setdefault(piece, len(vocab))
        while len(pieces) > 1:                                        # merge left to right into one token
            merges.append(f"{pieces[0]} {pieces[1]}")
            pieces = [pieces[0] + pieces[1]] + pieces[2:]
            vocab.setdefault(pieces[0], len(vocab))
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("\n".join(merges) + "\n")
    tokenizer = CLIPTokenizer(vocab=str(folder / "vocab.json"), merges=str(folder / "merges.txt"),
                              model_max_length=16)
    assert tokenizer("a red circle")["input_ids"] == [0, vocab["a</w>"], vocab["red</w>"], vocab["circle</w>"], 1]
    image_processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    config = CLIPConfig(
        text_config=dict(vocab_size=len(vocab), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, max_position_embeddings=16,
                         bos_token_id=0, eos_token_id=1, pad_token_id=1),
        vision_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                           image_size=32, patch_size=8),
        projection_dim=8,
    )
    torch.manual_seed(0)
    CLIPModel(config).save_pretrained(folder)
    CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(folder)
    return str(folder)


def test_clip_text_similarity_on_tiny_model(tiny_clip):
    frames = np.random.default_rng(7).integers(0, 256, (5, 40, 48, 3), dtype=np.uint8)
    result = timed("clip tiny 5 frames", clip_text_similarity, frames, "a red circle", model=tiny_clip)
    assert math.isfinite(result["clip_score"]) and -1.0 <= result["clip_score"] <= 1.0
    assert result["clip_model"] == tiny_clip and result["frames"] == 5
    assert len(result["clip_score_per_frame"]) == 5
    again = clip_text_similarity(frames.copy(), "a red circle", model=tiny_clip)
    assert again["clip_score"] == result["clip_score"]
    same_frame = clip_text_similarity(np.repeat(frames[:1], 3, axis=0), "a red circle", model=tiny_clip)
    assert max(same_frame["clip_score_per_frame"]) == pytest.approx(min(same_frame["clip_score_per_frame"]))
    other = clip_text_similarity(frames, "a blue square", model=tiny_clip)
    assert other["clip_score"] != result["clip_score"]


def test_clip_missing_model_is_a_model_error(tmp_path):
    frames = np.zeros((2, 16, 16, 3), np.uint8)
    missing = str(tmp_path / "no_such_clip")
    with pytest.raises(ModelError, match="no_such_clip") as info:
        clip_text_similarity(frames, "a red circle", model=missing)
    assert "local folder" in str(info.value)


# ------------------------------------------------------------------------------------------------- world videos

def rigid_params(world, seed, **fixed):
    """World params whose object only translates (no spin, constant size)."""
    params = world.sample_params(np.random.default_rng(seed), **fixed)
    return dataclasses.replace(params, spin=0.0, size_ratio=1.0)


@pytest.mark.parametrize("motion", ["linear", "circle", "wave", "bounce"])
def test_world_lk_tracks_match_ground_truth_centres(motion):
    world = pytest.importorskip("motiontransfer.shapes.world")
    clip = world.render(rigid_params(world, 0, motion=motion), 128, 16)
    tracks = track_points(clip.frames, grid=40, mask=clip.masks[0], tracker="lk")
    kept = tracks.xy[tracks.valid]
    assert len(kept) >= 5
    centres = clip.centres.astype(np.float64)
    error = np.linalg.norm((kept - kept[:, :1]) - (centres - centres[0]), axis=-1)
    print(f"world {motion}: {len(kept)}/{tracks.valid.size} tracks, median error {np.median(error):.3f} px")
    assert np.median(error) < 0.5


def test_world_same_trajectory_other_shape_scores_high():
    world = pytest.importorskip("motiontransfer.shapes.world")
    params = rigid_params(world, 1, shape="star", motion="wave")
    original = world.render(params, 96, 14)
    other_shape = world.render(dataclasses.replace(params, shape="circle", colour="yellow"), 96, 14)
    other_path = world.render(dataclasses.replace(params, motion="circle", amp_a=0.15, cycles=0.8), 96, 14)
    mask = original.masks[0]
    same = score_videos(original.frames, other_shape.frames, grid=GRID, mask=mask)
    moved = score_videos(original.frames, other_path.frames, grid=GRID, mask=mask)
    print(f"world: other shape {same['motion_fidelity']:.3f}, other trajectory {moved['motion_fidelity']:.3f}")
    assert same["motion_fidelity"] > 0.7
    assert moved["motion_fidelity"] <= same["motion_fidelity"] - 0.3
    assert score_videos(original.frames, original.frames, grid=GRID)["motion_fidelity"] >= 0.99
    # with a mask the edit is queried on the mask's box, which holds more (background) tracks than the mask
    assert score_videos(original.frames, original.frames, grid=GRID, mask=mask)["motion_fidelity"] >= 0.9
    reverse = score_videos(original.frames, original.frames[::-1].copy(), grid=GRID)
    assert reverse["motion_fidelity"] < 0.3


def test_world_clips_never_nan():
    world = pytest.importorskip("motiontransfer.shapes.world")
    rng = np.random.default_rng(9)
    a, b = world.sample_clip(rng, 32, 12), world.sample_clip(rng, 32, 12)
    result = score_videos(a.frames, b.frames, grid=GRID)
    assert math.isfinite(result["motion_fidelity"]) and math.isfinite(result["motion_fidelity_one_sided"])


def test_flow_tracker_follows_flat_coloured_objects_that_lk_cannot():
    """The shapes world's objects are flat: LK has no texture inside them, dense flow fills it in."""
    from motiontransfer.shapes import world

    errors, kept = [], {"lk": [], "flow": []}
    for seed in range(6):
        clip = world.sample_clip(np.random.default_rng(seed), size=64, frames=12, motion="linear")
        clip = world.render(dataclasses.replace(clip.params, spin=0.0, size_ratio=1.0), size=64, frames=12)
        deep = cv2.erode(clip.masks[0].astype(np.uint8), np.ones((5, 5), np.uint8)) > 0   # 2 px from the edge
        ys, xs = np.nonzero(deep)
        points = np.stack([xs, ys], 1).astype(np.float32) + 0.5
        for name in kept:
            tracks = track_points(clip.frames, points, tracker=name)
            kept[name].append(tracks.valid.mean())
            if name == "flow":
                moved = tracks.xy[tracks.valid, -1] - tracks.xy[tracks.valid, 0]
                errors.append(np.median(np.linalg.norm(moved - (clip.centres[-1] - clip.centres[0]), axis=1)))
    assert np.mean(kept["flow"]) > 0.8 > 0.5 > np.mean(kept["lk"])
    assert np.median(errors) < 1.0                              # px over 11 frames at 64x64


def test_score_files_undoes_an_enlarged_preview(tmp_path):
    """The transfer writes small results enlarged (nearest neighbour) and H.264-coded; `score` scores the content."""
    from motiontransfer.shapes import world
    from motiontransfer.video import write_video

    clip = world.render(world.sample_params(np.random.default_rng(2), motion="circle"), 32, 12)
    assert metrics.native_frames(clip.frames.repeat(8, axis=1).repeat(8, axis=2)).shape == clip.frames.shape
    write_video(tmp_path / "a.mp4", clip.frames, 8, min_size=256)
    write_video(tmp_path / "b.mp4", clip.frames[::-1].copy(), 8, min_size=256)
    same = metrics.score_files(tmp_path / "a.mp4", tmp_path / "a.mp4")
    assert same["size"] == [32, 32] and same["motion_fidelity"] == pytest.approx(1.0)
    reverse = metrics.score_files(tmp_path / "a.mp4", tmp_path / "b.mp4")["motion_fidelity"]
    assert reverse == pytest.approx(score_videos(clip.frames, clip.frames[::-1].copy())["motion_fidelity"], abs=0.1)
    rng = np.random.default_rng(3)
    footage = np.clip(texture(rng, 64, 64), 0, 255).astype(np.uint8)[None].repeat(4, axis=0)
    assert metrics.native_frames(footage) is footage                  # textured frames are left as they are


def test_principal_channel_tells_yellow_from_white():
    frames = np.full((2, 16, 16, 3), 255, np.uint8)
    frames[:, 4:12, 4:12] = (245, 220, 30)                             # the world's yellow on white
    grey = frames.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
    assert grey.max() - grey.min() < 50                                # a fifth of the grey range
    channel = metrics.principal_channel(frames)
    assert channel[0, 8, 8] == 0 and channel[0, 0, 0] == 255 or channel[0, 8, 8] == 255 and channel[0, 0, 0] == 0
    assert not metrics.principal_channel(np.full((2, 8, 8, 3), 7, np.uint8)).any()


def test_flow_keeps_a_plain_background_still_and_scores_every_size_alike():
    """DIS alone drags a plain background along with the object (about 40% of these points end more than 5% of
    the side away); the static prior keeps most of it still."""
    from motiontransfer.shapes import world

    params = world.sample_params(np.random.default_rng(5), motion="linear")
    scores = []
    for size in (32, 64, 128):
        clip = world.render(params, size, 12)
        tracks = track_points(clip.frames, grid=20)
        far = ~cv2.dilate(clip.masks.any(axis=0).astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)
        start = np.clip((tracks.xy[:, 0] - 0.5).astype(int), 0, size - 1)
        background = far[start[:, 1], start[:, 0]]
        drift = np.linalg.norm(tracks.xy[background, -1] - tracks.xy[background, 0], axis=1)
        assert background.sum() > 50 and np.median(drift) == 0.0 and np.mean(drift > 0.05 * size) < 0.2
        scores.append(score_videos(clip.frames, clip.frames[::-1].copy(), grid=20)["motion_fidelity"])
    assert max(scores) - min(scores) < 0.15 and max(scores) < 0.3
