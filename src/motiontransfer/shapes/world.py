"""A synthetic world of one moving shape: small videos with captions and ground truth.

Each clip shows one coloured object (circle, square, triangle, star, heart) on a background of one named
colour, plain or, in version 2 of the world, faintly textured (a gradient or smooth noise, `TEXTURES`). The
object's centre follows a parametric trajectory (`MOTIONS`), its size may change smoothly (approach,
recede) and it may spin at a constant angular speed. Everything needed to render a clip lives in a
`ClipParams`, in resolution-independent units, so the same clip renders at 32x32 for training and at
128x128 or 256x256 for a demo or a benchmark.

Coordinates (pixels, at any resolution). x points right, y points down, and the origin is the top-left
corner of the top-left pixel: pixel (row i, column j) covers [j, j + 1] x [i, i + 1] and its centre is
(j + 0.5, i + 0.5). Normalised coordinates are pixel coordinates divided by the image side, so (0.5, 0.5)
is the image centre at every resolution, and a normalised length L is L * size pixels. Angles are in
radians; a positive angle turns x towards y, i.e. clockwise on screen.

Time. A clip of F frames samples normalised time t = i / (F - 1), i = 0..F-1 (t = 0 for a single frame),
so trajectories, size changes and rotations are per clip, not per frame.

Size. The size of the object is its circumradius about its centre: the object lies inside the disc of that
radius around the centre and touches it. The centre is the area centroid of the shape, so the centroid of
the rendered mask of a shape at rest is the ground-truth centre up to rasterisation.

Rendering. Each frame is rasterised at `supersample` times the output side with `cv2.fillPoly` and
averaged down with `cv2.INTER_AREA`; the fraction of covered sub-pixels blends the object colour over the
background colour, and the mask holds the pixels with coverage >= 0.5. The object always lies inside the
frame: trajectories are fitted (at sampling time) or reflected (bounce) in the box whose margin is the
largest size of the clip.

Backgrounds. A textured background stays within `_TEXTURE_AMPLITUDE` grey levels of its named colour,
always towards mid-grey (so nothing clips), and is the same in every frame: a static scene behind a moving
object, as in real footage, while the background colour and the object stay easy to tell apart.

Light (version 3 of the world). A clip may be lit by the world's one fixed light (`apply_light`, strength
`ClipParams.light`): brighter at the top than at the bottom and warmer on the left than on the right, the same
in every clip. It is a cue to absolute position that plain backgrounds lack: the object looks a little different
in each part of the frame, so features averaged over the frame can tell where it is.

Captions follow one grammar, `a {colour} {shape} [{motion phrase}] on a {background} background`, e.g.
"a red star moving left on a white background".
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import cv2
import numpy as np
from tqdm.auto import tqdm

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "heart")

# Object colours, RGB. Saturated, and at least 40 apart in CIELAB (Delta E 1976) from each other.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (215, 25, 35),
    "green": (30, 170, 50),
    "blue": (40, 100, 245),
    "yellow": (245, 220, 30),
    "purple": (140, 20, 150),
    "orange": (255, 150, 20),
}

BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "black": (0, 0, 0),
    "white": (255, 255, 255),
    "gray": (128, 128, 128),
    "navy": (20, 30, 100),
}

# (colour, background) pairs never sampled: their CIELAB Delta E 1976 is below MIN_CONTRAST, so the object
# would be hard to see. Every other pair is at least MIN_CONTRAST apart (about 78 or more). `render` still
# draws a forbidden pair when asked to explicitly.
MIN_CONTRAST = 60.0
FORBIDDEN: frozenset[tuple[str, str]] = frozenset({("blue", "navy"), ("purple", "navy")})

MOTIONS: tuple[str, ...] = (
    "linear",      # constant velocity along a line, any direction
    "bounce",      # constant velocity, reflected off the walls (at least one bounce)
    "circle",      # constant angular speed on a circle
    "ellipse",     # constant parametric speed on a tilted ellipse
    "zigzag",      # drift along a line plus a triangle wave across it
    "wave",        # drift along a line plus a sine wave across it
    "accelerate",  # along a line from rest, ease in (distance ~ t^2)
    "decelerate",  # along a line to rest, ease out (distance ~ 1 - (1 - t)^2)
    "pause",       # along a line at constant speed, at rest during [pause_start, pause_end]
)

# Background patterns (version 2 of the world): none, a linear gradient, smooth value noise. Static in time.
TEXTURES: tuple[str, ...] = ("plain", "gradient", "noise")

_POSITION_COLUMNS = ("left", "", "right")      # thirds of the frame (describe_position)
_POSITION_ROWS = ("top", "", "bottom")
_DIRECTIONS = ("right", "up and right", "up", "up and left", "left", "down and left", "down", "down and right")
_MOTION_PHRASES: dict[str, str] = {  # "linear" takes "moving {direction}" instead
    "bounce": "bouncing around",
    "circle": "circling",
    "ellipse": "moving in an ellipse",
    "zigzag": "zigzagging",
    "wave": "moving in waves",
    "accelerate": "speeding up",
    "decelerate": "slowing down",
    "pause": "pausing",
}

# Sampling ranges. Normalised units; the px/frame figures are for 32x32 and 16 frames (1 unit = 32/15 px/frame).
_SIZE_RANGE = (0.13, 0.25)         # circumradius over the whole clip: 4.2 to 8 px at 32x32 (8 to 16 px across)
_SIZE_RATIO_RANGES = ((0.6, 0.8), (1.25, 1.6))  # recede / approach: size at t = 1 over size at t = 0
_P_STATIC_SIZE = 0.3               # fraction of clips with no size change
_P_NO_SPIN = 0.25                  # fraction of clips with no rotation
_SPIN_RANGE = (0.5 * math.pi, 2.0 * math.pi)   # |radians per clip|: at most 24 degrees per frame at 16 frames
_ANGLE0_RANGE = (-0.25 * math.pi, 0.25 * math.pi)
_LINE_LENGTH = (0.25, 0.55)        # linear, accelerate, decelerate: 0.5 to 1.2 px/frame on average
_PAUSE_LENGTH = (0.3, 0.55)        # pause: 0.9 to 2.0 px/frame while moving
_PAUSE_START = (0.2, 0.45)
_PAUSE_DURATION = (0.3, 0.4)
_BOUNCE_LENGTH = (0.6, 1.1)        # unfolded path: 1.3 to 2.3 px/frame
_ORBIT_RADIUS = (0.1, 0.18)        # circle: 0.8 to 2.4 px/frame
_ORBIT_TURNS = (0.6, 1.0)
_ELLIPSE_AXIS = (0.12, 0.2)
_ELLIPSE_RATIO = (0.4, 0.6)        # minor over major axis
_DRIFT_LENGTH = (0.2, 0.4)         # zigzag, wave
_LATERAL_AMPLITUDE = (0.05, 0.1)
_ZIGZAG_PERIODS = (1.5, 2.5)
_WAVE_PERIODS = (1.0, 1.75)
_TEXTURE_AMPLITUDE = (8.0, 16.0)   # grey levels at most off the named colour; the segmenter's floor is 40
_NOISE_GRID = 5                    # value noise: a 5x5 grid of random levels, bicubically interpolated
_FIT_SAMPLES = 513                 # times at which a trajectory is checked to stay inside the frame


def _unit_polygon(points: np.ndarray) -> np.ndarray:
    """Moves a polygon's area centroid to the origin and scales its farthest vertex to distance 1. (K, 2)."""
    x, y = points[:, 0], points[:, 1]
    xn, yn = np.roll(x, -1), np.roll(y, -1)
    cross = x * yn - xn * y
    area = cross.sum() / 2
    centroid = np.array([((x + xn) * cross).sum(), ((y + yn) * cross).sum()]) / (6 * area)
    centred = points - centroid
    return centred / np.linalg.norm(centred, axis=1).max()


def _ring(count: int, radii: np.ndarray | float, start: float) -> np.ndarray:
    angles = start + 2 * math.pi * np.arange(count) / count
    return np.stack([np.cos(angles), np.sin(angles)], axis=1) * np.reshape(radii, (-1, 1))


def _heart(count: int = 128) -> np.ndarray:
    s = 2 * math.pi * np.arange(count) / count
    x = 16 * np.sin(s) ** 3
    y = -(13 * np.cos(s) - 5 * np.cos(2 * s) - 2 * np.cos(3 * s) - np.cos(4 * s))   # y down: point at the bottom
    return np.stack([x, y], axis=1)


# Unit polygons, (K, 2) float64, in the shape's own frame (x right, y down, angle 0 = upright).
_POLYGONS: dict[str, np.ndarray] = {
    "circle": _unit_polygon(_ring(96, 1.0, 0.0)),
    "square": _unit_polygon(_ring(4, 1.0, 0.25 * math.pi)),
    "triangle": _unit_polygon(_ring(3, 1.0, -0.5 * math.pi)),
    "star": _unit_polygon(_ring(10, np.tile([1.0, 0.5], 5), -0.5 * math.pi)),
    "heart": _unit_polygon(_heart()),
}


@dataclass(frozen=True)
class ClipParams:
    """Everything needed to render one clip, at any resolution and frame count.

    Positions and lengths are normalised (fractions of the image side); t is normalised time in [0, 1]. The
    trajectory is `anchor + relative(t)`, with `anchor = (x0, y0)`:

    linear, bounce, accelerate, decelerate, pause:  (dx, dy) * progress(t); bounce folds the result into the
        box that keeps the object inside the frame.
    circle, ellipse:  amp_a, amp_b are the semi-axes (amp_b is ignored for a circle), `tilt` turns the
        amp_a axis, `phase` is the start angle on the orbit and `cycles` the signed number of turns
        (positive: clockwise on screen). The anchor is the orbit's centre.
    zigzag, wave:  drift (dx, dy) * t plus amp_a * w(cycles * t + phase / 2 pi) along the drift's left-hand
        normal, w a triangle wave (zigzag) or a sine (wave) of period 1 and amplitude 1.
    """

    shape: str
    colour: str
    background: str
    motion: str
    x0: float                      # anchor, normalised: start point, or orbit centre (circle, ellipse)
    y0: float
    dx: float = 0.0                # displacement over the clip, normalised (unfolded for bounce)
    dy: float = 0.0
    amp_a: float = 0.0             # orbit semi-axis along `tilt`, or lateral amplitude (zigzag, wave), normalised
    amp_b: float = 0.0             # ellipse semi-axis across `tilt`, normalised
    tilt: float = 0.0              # ellipse axis angle, radians
    cycles: float = 0.0            # turns (circle, ellipse; signed) or periods (zigzag, wave) per clip
    phase: float = 0.0             # radians
    pause_start: float = 0.0       # pause: normalised time interval at rest
    pause_end: float = 0.0
    size0: float = 0.2             # circumradius at t = 0, normalised
    size_ratio: float = 1.0        # circumradius at t = 1 over size0; size(t) = size0 * size_ratio ** t
    angle0: float = 0.0            # radians at t = 0 (clockwise on screen)
    spin: float = 0.0              # radians per clip; angle(t) = angle0 + spin * t
    texture: str = "plain"         # background pattern, one of TEXTURES
    texture_amplitude: float = 0.0 # grey levels, the pattern's largest distance from the named colour
    texture_angle: float = 0.0     # gradient: direction in which it moves away from the colour, radians
    texture_seed: int = 0          # noise: the seed of its grid of levels
    light: float = 0.0             # strength of the world's fixed light (`apply_light`); 0: unlit

    def __post_init__(self):
        for field, names in (("shape", SHAPES), ("colour", COLOURS), ("background", BACKGROUNDS),
                             ("motion", MOTIONS), ("texture", TEXTURES)):
            if getattr(self, field) not in names:
                raise ValueError(f"unknown {field} {getattr(self, field)!r}; choose from {', '.join(names)}")
        if not (self.size0 > 0 and self.size_ratio > 0):
            raise ValueError(f"size0 and size_ratio must be positive, got {self.size0}, {self.size_ratio}")
        if not 0.0 <= self.texture_amplitude <= 127.0:
            raise ValueError(f"texture_amplitude must be in [0, 127] grey levels, got {self.texture_amplitude}")
        if not 0.0 <= self.light < 1.0:
            raise ValueError(f"light must be in [0, 1), got {self.light}")
        if not 0.0 <= self.pause_start <= self.pause_end <= 1.0 or self.pause_end - self.pause_start >= 1.0:
            raise ValueError(f"need 0 <= pause_start <= pause_end <= 1 and a pause shorter than the clip, "
                             f"got [{self.pause_start}, {self.pause_end}]")

    @property
    def max_size(self) -> float:
        """The largest circumradius of the clip, normalised: the margin that keeps the object in the frame."""
        return self.size0 * max(1.0, self.size_ratio)


@dataclass
class Clip:
    """A rendered clip and its ground truth (pixel units of this resolution; conventions in the module doc)."""

    frames: np.ndarray      # (F, H, W, 3) uint8 RGB
    masks: np.ndarray       # (F, H, W) bool, pixels at least half covered by the object
    centres: np.ndarray     # (F, 2) float32, (x, y) of the object's area centroid, pixels
    sizes: np.ndarray       # (F,) float32, circumradius about the centre, pixels
    angles: np.ndarray      # (F,) float32, radians, clockwise on screen (no visible effect for a circle)
    caption: str
    params: ClipParams


# ------------------------------------------------------------------------------------------------ trajectories

def frame_times(frames: int) -> np.ndarray:
    """Normalised times of the frames of a clip, (F,) float64: i / (F - 1), or [0] for one frame."""
    if frames < 1:
        raise ValueError(f"frames must be >= 1, got {frames}")
    return np.linspace(0.0, 1.0, frames) if frames > 1 else np.zeros(1)


def _progress(params: ClipParams, t: np.ndarray) -> np.ndarray:
    """Fraction of the drift (dx, dy) covered at times t, (T,)."""
    if params.motion == "accelerate":
        return t * t
    if params.motion == "decelerate":
        return 1.0 - (1.0 - t) ** 2
    if params.motion == "pause":
        a, b = params.pause_start, params.pause_end
        return (np.minimum(t, a) + np.maximum(t - b, 0.0)) / (1.0 - (b - a))
    return t


def _reflect(x: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Folds x into [lo, hi] as a ball reflected by walls at lo and hi would."""
    width = hi - lo
    if width <= 0:
        return np.full_like(x, (lo + hi) / 2)
    u = np.mod(x - lo, 2 * width)
    return lo + width - np.abs(u - width)


def trajectory(params: ClipParams, t: np.ndarray) -> np.ndarray:
    """Normalised centre (x, y) at normalised times t: (T,) -> (T, 2) float64."""
    t = np.asarray(t, dtype=np.float64)
    motion = params.motion
    if motion in ("circle", "ellipse"):
        b = params.amp_b if motion == "ellipse" else params.amp_a
        phi = params.phase + 2 * math.pi * params.cycles * t
        u, v = params.amp_a * np.cos(phi), b * np.sin(phi)
        c, s = math.cos(params.tilt), math.sin(params.tilt)
        rel = np.stack([c * u - s * v, s * u + c * v], axis=1)
    else:
        drift = np.array([params.dx, params.dy])
        rel = _progress(params, t)[:, None] * drift
        if motion in ("zigzag", "wave"):
            length = float(np.hypot(*drift))
            normal = np.array([drift[1], -drift[0]]) / length if length > 0 else np.array([0.0, 1.0])
            arg = params.cycles * t + params.phase / (2 * math.pi)
            w = np.sin(2 * math.pi * arg)
            if motion == "zigzag":
                w = (2 / math.pi) * np.arcsin(np.clip(w, -1.0, 1.0))   # triangle wave, same zeros and peaks
            rel = rel + params.amp_a * w[:, None] * normal
    centre = np.array([params.x0, params.y0]) + rel
    if motion == "bounce":
        margin = params.max_size
        centre = _reflect(centre, margin, 1.0 - margin)
    return centre


def sizes_at(params: ClipParams, t: np.ndarray) -> np.ndarray:
    """Normalised circumradius at times t, (T,) float64."""
    return params.size0 * params.size_ratio ** np.asarray(t, dtype=np.float64)


def angles_at(params: ClipParams, t: np.ndarray) -> np.ndarray:
    """Angle in radians at times t, (T,) float64."""
    return params.angle0 + params.spin * np.asarray(t, dtype=np.float64)


# ---------------------------------------------------------------------------------------------------- sampling

def _balanced_pairs(iterations: int = 200) -> np.ndarray:
    """Joint probabilities of (colour, background), (C, B) float64: zero on FORBIDDEN pairs, with uniform
    marginals over colours and over backgrounds (Sinkhorn scaling of the allowed-pair matrix).

    With blue and purple barred from navy, navy is drawn with probability 3/8 for the other colours, so
    every background still shows up in a quarter of the clips.
    """
    joint = np.array([[float((c, b) not in FORBIDDEN) for b in BACKGROUNDS] for c in COLOURS])
    for _ in range(iterations):
        joint /= joint.sum(axis=1, keepdims=True) * len(COLOURS)
        joint /= joint.sum(axis=0, keepdims=True) * len(BACKGROUNDS)
    return joint


PAIR_PROBABILITIES = _balanced_pairs()   # (len(COLOURS), len(BACKGROUNDS)), rows and columns as the dicts


def allowed_backgrounds(colour: str) -> list[str]:
    """Backgrounds sampled with an object of this colour (all but the FORBIDDEN ones), in BACKGROUNDS order."""
    return [b for b in BACKGROUNDS if (colour, b) not in FORBIDDEN]


def allowed_colours(background: str) -> list[str]:
    """Object colours sampled on this background, in COLOURS order."""
    return [c for c in COLOURS if (c, background) not in FORBIDDEN]


def _pick(options, u: float, weights: np.ndarray | None = None):
    """The option at quantile u in [0, 1) of the distribution `weights` (uniform when None)."""
    if weights is None:
        return options[min(int(u * len(options)), len(options) - 1)]
    cumulative = np.cumsum(weights) / weights.sum()
    return options[min(int(np.searchsorted(cumulative, u, side="right")), len(options) - 1)]


def _sign(rng: np.random.Generator) -> float:
    return 1.0 if rng.random() < 0.5 else -1.0


def _direction(rng: np.random.Generator, length: float) -> tuple[float, float]:
    theta = rng.uniform(0.0, 2 * math.pi)
    return length * math.cos(theta), length * math.sin(theta)


def _fit_in_frame(rng: np.random.Generator, params: ClipParams) -> ClipParams:
    """Shrinks the trajectory if it is wider than the free box, then draws the anchor so that it fits.

    `params` has its anchor at the origin; every non-bounce trajectory is linear in (dx, dy, amp_a, amp_b),
    so scaling them scales the path.
    """
    margin = params.max_size
    room = 1.0 - 2.0 * margin
    rel = trajectory(params, np.linspace(0.0, 1.0, _FIT_SAMPLES))
    lo, hi = rel.min(axis=0), rel.max(axis=0)
    extent = float((hi - lo).max())
    scale = min(1.0, room / extent) if extent > 0 else 1.0
    lo, hi = lo * scale, hi * scale
    low = margin - lo                                   # (2,) anchor range; empty only by rounding
    high = np.maximum(low, 1.0 - margin - hi)
    x0, y0 = (float(rng.uniform(a, b)) for a, b in zip(low, high))
    return dataclasses.replace(params, x0=x0, y0=y0, dx=params.dx * scale, dy=params.dy * scale,
                               amp_a=params.amp_a * scale, amp_b=params.amp_b * scale)


def _bounce_anchor(rng: np.random.Generator, params: ClipParams) -> ClipParams:
    """Draws a start point from which the unfolded path leaves the free box (so it bounces at least once)."""
    margin = params.max_size
    for _ in range(100):
        x0, y0 = rng.uniform(margin, 1.0 - margin, size=2)
        ex, ey = x0 + params.dx, y0 + params.dy
        if not (margin <= ex <= 1.0 - margin and margin <= ey <= 1.0 - margin):
            break
    return dataclasses.replace(params, x0=float(x0), y0=float(y0))


def sample_params(rng: np.random.Generator, *, shape: str | None = None, colour: str | None = None,
                  background: str | None = None, motion: str | None = None,
                  texture_prob: float = 0.0, light: float = 0.0) -> ClipParams:
    """Draws a clip: uniform shape, colour, background and motion (colour and background by PAIR_PROBABILITIES).

    Arguments that are given are kept; the random draws are made all the same, so fixing the shape, say,
    leaves the colour, background and motion of the same generator state unchanged. About 25% of clips
    do not spin and about 30% keep their size. With probability `texture_prob` the background is textured
    (gradient or noise, equally likely); those draws come last and only when `texture_prob` > 0, so version 1
    clips of a seed are unchanged. The clip is lit with strength `light` (no draw). Raises ValueError for an
    unknown name or a FORBIDDEN pair.
    """
    params = _sample_plain(rng, shape=shape, colour=colour, background=background, motion=motion)
    if light:
        params = dataclasses.replace(params, light=light)
    if texture_prob <= 0.0 or rng.random() >= texture_prob:
        return params
    return dataclasses.replace(params, texture=TEXTURES[1 + int(rng.integers(len(TEXTURES) - 1))],
                               texture_amplitude=float(rng.uniform(*_TEXTURE_AMPLITUDE)),
                               texture_angle=float(rng.uniform(0.0, 2 * math.pi)),
                               texture_seed=int(rng.integers(2 ** 31)))


def _sample_plain(rng: np.random.Generator, *, shape: str | None, colour: str | None, background: str | None,
                  motion: str | None) -> ClipParams:
    """`sample_params` without the background texture (version 1 of the world)."""
    u_shape, u_colour, u_background, u_motion = rng.random(4)
    shape = shape if shape is not None else _pick(SHAPES, u_shape)
    colours, backgrounds = list(COLOURS), list(BACKGROUNDS)
    for name, names, kind in ((colour, colours, "colour"), (background, backgrounds, "background")):
        if name is not None and name not in names:
            raise ValueError(f"unknown {kind} {name!r}; choose from {', '.join(names)}")
    if colour is None:
        given = None if background is None else PAIR_PROBABILITIES[:, backgrounds.index(background)]
        colour = _pick(colours, u_colour, given)
    if (colour, background) in FORBIDDEN:
        raise ValueError(f"a {colour} object on a {background} background is too hard to see (FORBIDDEN)")
    if background is None:
        background = _pick(backgrounds, u_background, PAIR_PROBABILITIES[colours.index(colour)])
    motion = motion if motion is not None else _pick(MOTIONS, u_motion)

    # Size: the ratio first, then a start size that keeps the whole clip within _SIZE_RANGE.
    if rng.random() < _P_STATIC_SIZE:
        ratio = 1.0
    else:
        low, high = _SIZE_RATIO_RANGES[int(rng.integers(2))]
        ratio = math.exp(rng.uniform(math.log(low), math.log(high)))
    size0 = rng.uniform(_SIZE_RANGE[0] / min(1.0, ratio), _SIZE_RANGE[1] / max(1.0, ratio))
    angle0 = rng.uniform(*_ANGLE0_RANGE)
    spin = 0.0 if rng.random() < _P_NO_SPIN else rng.uniform(*_SPIN_RANGE) * _sign(rng)

    params = ClipParams(shape=shape, colour=colour, background=background, motion=motion, x0=0.0, y0=0.0,
                        size0=size0, size_ratio=ratio, angle0=angle0, spin=spin)
    if motion in ("linear", "accelerate", "decelerate"):
        dx, dy = _direction(rng, rng.uniform(*_LINE_LENGTH))
        params = dataclasses.replace(params, dx=dx, dy=dy)
    elif motion == "pause":
        dx, dy = _direction(rng, rng.uniform(*_PAUSE_LENGTH))
        start = rng.uniform(*_PAUSE_START)
        params = dataclasses.replace(params, dx=dx, dy=dy, pause_start=start,
                                     pause_end=start + rng.uniform(*_PAUSE_DURATION))
    elif motion == "bounce":
        dx, dy = _direction(rng, rng.uniform(*_BOUNCE_LENGTH))
        return _bounce_anchor(rng, dataclasses.replace(params, dx=dx, dy=dy))
    elif motion == "circle":
        params = dataclasses.replace(params, amp_a=rng.uniform(*_ORBIT_RADIUS), phase=rng.uniform(0, 2 * math.pi),
                                     cycles=rng.uniform(*_ORBIT_TURNS) * _sign(rng))
    elif motion == "ellipse":
        a = rng.uniform(*_ELLIPSE_AXIS)
        params = dataclasses.replace(params, amp_a=a, amp_b=a * rng.uniform(*_ELLIPSE_RATIO),
                                     tilt=rng.uniform(0, math.pi), phase=rng.uniform(0, 2 * math.pi),
                                     cycles=rng.uniform(*_ORBIT_TURNS) * _sign(rng))
    else:  # zigzag, wave
        dx, dy = _direction(rng, rng.uniform(*_DRIFT_LENGTH))
        periods = _ZIGZAG_PERIODS if motion == "zigzag" else _WAVE_PERIODS
        params = dataclasses.replace(params, dx=dx, dy=dy, amp_a=rng.uniform(*_LATERAL_AMPLITUDE),
                                     cycles=rng.uniform(*periods), phase=rng.uniform(0, 2 * math.pi))
    return _fit_in_frame(rng, params)


# --------------------------------------------------------------------------------------------------- rendering

def _coverage(params: ClipParams, centres: np.ndarray, sizes: np.ndarray, angles: np.ndarray, size: int,
              supersample: int) -> np.ndarray:
    """Covered sub-pixels per output pixel, (F, H, W) int64 in [0, supersample ** 2].

    centres (F, 2) and sizes (F,) in output pixels, angles (F,) radians.
    """
    ss = supersample
    side = size * ss
    unit = _POLYGONS[params.shape]                                             # (K, 2)
    if params.shape == "circle":
        angles = np.zeros_like(angles)
    cos, sin = np.cos(angles), np.sin(angles)
    rot = np.stack([np.stack([cos, -sin], -1), np.stack([sin, cos], -1)], -2)  # (F, 2, 2)
    pts = np.einsum("fij,kj->fki", rot, unit) * sizes[:, None, None] + centres[:, None, :]   # (F, K, 2) px
    # Sub-pixel canvas in cv2's pixel-centre convention, fixed point with 8 fractional bits.
    fixed = np.rint((pts * ss - 0.5) * 256.0).astype(np.int32)
    # Filling with ss**2 makes the INTER_AREA mean over an ss x ss block the exact covered count (uint8 when it fits).
    dtype = np.uint8 if ss * ss <= 255 else np.float32
    canvas = np.zeros((side, side), dtype)
    out = np.empty((len(pts), size, size), np.int64)
    for i, poly in enumerate(fixed):
        canvas[:] = 0
        cv2.fillPoly(canvas, [poly], ss * ss, cv2.LINE_8, 8)
        block = cv2.resize(canvas, (size, size), interpolation=cv2.INTER_AREA) if ss > 1 else canvas
        out[i] = np.rint(block) if dtype == np.float32 else block
    return out


def background_image(params: ClipParams, size: int) -> np.ndarray:
    """The clip's background, (size, size, 3) float64 RGB in [0, 255], the same in every frame.

    The pattern p(x, y) in [0, 1] (0 for "plain") moves each channel `texture_amplitude * p` grey levels from
    the named colour towards mid-grey. Gradient: p rises linearly along `texture_angle` across the frame.
    Noise: a `_NOISE_GRID` x `_NOISE_GRID` grid of uniform levels from `texture_seed`, bicubically
    interpolated and stretched to [0, 1]. Both are defined in normalised coordinates, so a clip looks the
    same at every resolution.
    """
    bg = np.array(BACKGROUNDS[params.background], np.float64)
    if params.texture == "plain" or params.texture_amplitude == 0.0:
        return np.broadcast_to(bg, (size, size, 3)).copy()
    centres = (np.arange(size) + 0.5) / size - 0.5                              # normalised, about the centre
    if params.texture == "gradient":
        c, s = math.cos(params.texture_angle), math.sin(params.texture_angle)
        along = c * centres[None, :] + s * centres[:, None]                     # (H, W) in [-0.71, 0.71]
        pattern = along / math.sqrt(0.5) * 0.5 + 0.5
    else:
        grid = np.random.default_rng(params.texture_seed).random((_NOISE_GRID, _NOISE_GRID))
        coords = (centres + 0.5) * (_NOISE_GRID - 1)                            # grid units
        pattern = _bicubic(grid, coords)
        pattern = (pattern - pattern.min()) / max(float(np.ptp(pattern)), 1e-9)
    towards_grey = np.where(bg > 127.5, -1.0, 1.0)                              # (3,) never clips
    return bg + params.texture_amplitude * pattern[..., None] * towards_grey


def light_gain(size: int, strength: float) -> np.ndarray:
    """The world's fixed light as a per-pixel, per-channel gain, (size, size, 3) float64.

    Brightness falls linearly from 1 + strength/2 at the top edge to 1 - strength/2 at the bottom, and a warm
    tint falls from left to right: red gains, and blue loses, up to 3/8 of `strength` at the left edge, the
    reverse at the right. Two independent ramps, so both coordinates of a position show. Normalised
    coordinates: the same light at every resolution.
    """
    centres = (np.arange(size) + 0.5) / size - 0.5                              # normalised, about the centre
    tint = np.array([1.0, 0.0, -1.0])
    return (1.0 - strength * centres[:, None, None]
            - 0.75 * strength * centres[None, :, None] * tint)


def apply_light(frames: np.ndarray, strength: float) -> np.ndarray:
    """`frames` (..., H, W, 3) uint8 under the world's fixed light of `strength` (`light_gain`); uint8."""
    if strength == 0.0:
        return frames
    gain = light_gain(frames.shape[-2], strength)
    return np.rint(frames * gain).clip(0, 255).astype(np.uint8)


def _bicubic(grid: np.ndarray, coords: np.ndarray) -> np.ndarray:
    """Catmull-Rom interpolation of a (G, G) grid at (coords[i], coords[j]) for all i, j (grid units, rows by
    the first index): (N,) -> (N, N). Resolution-independent, unlike an image resize of the grid."""
    g = len(grid)

    def weights(u):                                   # (N,) -> (N, G) interpolation matrix along one axis
        base = np.floor(u).astype(int)
        f = u - base
        w = np.stack([(-f ** 3 + 2 * f ** 2 - f) / 2, (3 * f ** 3 - 5 * f ** 2 + 2) / 2,
                      (-3 * f ** 3 + 4 * f ** 2 + f) / 2, (f ** 3 - f ** 2) / 2], axis=1)
        m = np.zeros((len(u), g))
        for k in range(4):
            np.add.at(m, (np.arange(len(u)), np.clip(base + k - 1, 0, g - 1)), w[:, k])
        return m

    m = weights(coords)
    return m @ grid @ m.T


def render(params: ClipParams, size: int = 32, frames: int = 16, *, supersample: int = 4,
           motion_phrase: bool = False, position_phrase: bool = False, times: np.ndarray | None = None) -> Clip:
    """Renders a clip of `frames` frames at `size` x `size` pixels; deterministic given its arguments.

    The object's colour is blended over the background by the fraction of its `supersample` x `supersample`
    sub-pixels that the object covers; the caption has a motion phrase when `motion_phrase` is true, and says
    where the object starts when `position_phrase` is true (`describe_position`). `times` (normalised, one per
    frame) replaces `frame_times(frames)`, e.g. to show a part of the clip's path or the path ahead of time.
    """
    if size < 1 or supersample < 1:
        raise ValueError(f"size and supersample must be >= 1, got {size}, {supersample}")
    t = frame_times(frames) if times is None else np.asarray(times, dtype=np.float64).reshape(-1)
    centres = trajectory(params, t) * size                                   # (F, 2) px
    sizes = sizes_at(params, t) * size                                       # (F,) px
    angles = angles_at(params, t)                                            # (F,) rad
    count = _coverage(params, centres, sizes, angles, size, supersample)     # (F, H, W)
    levels = supersample * supersample
    obj = np.array(COLOURS[params.colour], np.float64)
    bg = background_image(params, size)                                      # (H, W, 3)
    cover = count[..., None] / levels                                        # (F, H, W, 1) in [0, 1]
    pixels = np.rint(bg + cover * (obj - bg)).clip(0, 255).astype(np.uint8)
    return Clip(frames=apply_light(pixels, params.light), masks=2 * count >= levels, centres=centres.astype(np.float32),
                sizes=sizes.astype(np.float32), angles=angles.astype(np.float32),
                caption=caption(params, motion_phrase=motion_phrase,
                                start=centres[0] / size if position_phrase else None), params=params)


def centre_from_mask(mask: np.ndarray) -> np.ndarray:
    """Centroid (x, y) of a boolean mask in the module's pixel convention: (..., H, W) -> (..., 2) float64.

    An empty mask gives NaN.
    """
    mask = np.asarray(mask, dtype=np.float64)
    h, w = mask.shape[-2:]
    area = mask.sum(axis=(-2, -1))
    with np.errstate(invalid="ignore", divide="ignore"):
        x = (mask.sum(axis=-2) * (np.arange(w) + 0.5)).sum(axis=-1) / area
        y = (mask.sum(axis=-1) * (np.arange(h) + 0.5)).sum(axis=-1) / area
    return np.stack([x, y], axis=-1)


# ---------------------------------------------------------------------------------------------------- captions

def _linear_direction(dx: float, dy: float) -> str:
    """One of eight screen directions (45-degree sectors) of a displacement; y points down."""
    sector = int(round(math.atan2(-dy, dx) / (math.pi / 4))) % 8
    return _DIRECTIONS[sector]


def describe_motion(params: ClipParams) -> str:
    """The words describing the clip's motion, e.g. "moving up and left", "bouncing around"."""
    if params.motion == "linear":
        return "moving " + _linear_direction(params.dx, params.dy)
    return _MOTION_PHRASES[params.motion]


def describe_position(x: float, y: float) -> str:
    """Where a normalised point (x right, y down, both in [0, 1]) lies, by thirds of the frame: "top left",
    "top", "top right", "left", "middle", "right", "bottom left", "bottom", "bottom right"."""
    column = _POSITION_COLUMNS[min(2, max(0, int(x * 3)))]
    row = _POSITION_ROWS[min(2, max(0, int(y * 3)))]
    return " ".join(w for w in (row, column) if w) or "middle"


def caption(params: ClipParams, *, motion_phrase: bool, start: tuple[float, float] | None = None) -> str:
    """`a {colour} {shape} [{motion phrase}] [from {position}] on a {background} background`; the position
    phrase (world version 4) says where the object is at the first frame, `start` (normalised x, y)."""
    words = ["a", params.colour, params.shape]
    if motion_phrase:
        words.append(describe_motion(params))
    if start is not None:
        words += ["from", describe_position(*start)]
    words += ["on", "a", params.background, "background"]
    return " ".join(words)


def plain_caption(colour: str, shape: str, background: str) -> str:
    """`a {colour} {shape} on a {background} background`: a caption without a motion phrase."""
    return f"a {colour} {shape} on a {background} background"


def other_looks(params: ClipParams) -> tuple[list[str], list[str]]:
    """The targets of a transfer that changes a clip's look and keeps its background: the shapes other than its
    own (SHAPES order) and the colours other than its own that its background allows (COLOURS order)."""
    shapes = [s for s in SHAPES if s != params.shape]
    colours = [c for c in allowed_colours(params.background) if c != params.colour]
    return shapes, colours


def _phrases() -> dict[str, str]:
    """Every motion phrase -> its motion name."""
    phrases = {"moving " + d: "linear" for d in _DIRECTIONS}
    phrases.update({phrase: motion for motion, phrase in _MOTION_PHRASES.items()})
    return phrases


def vocabulary() -> list[str]:
    """Every word a caption can contain, lowercase, sorted."""
    words = {"a", "on", "background", "from", "middle", *SHAPES, *COLOURS, *BACKGROUNDS, *_POSITION_ROWS,
             *_POSITION_COLUMNS} - {""}
    for phrase in _phrases():
        words.update(phrase.split())
    return sorted(words)


def _words(text: str) -> list[str]:
    return "".join(ch if ch.isalnum() else " " for ch in text.lower()).split()


def parse_caption(text: str) -> dict[str, str | None]:
    """What a prompt asks for: {"colour", "shape", "background", "motion"}, None where absent.

    The background is the background name right before the word "background"; the colour is the first
    object colour elsewhere; the shape the first shape name; the motion the longest motion phrase found.
    """
    words = _words(text)
    background_at = None
    for i in range(1, len(words)):
        if words[i] == "background" and words[i - 1] in BACKGROUNDS:
            background_at = i - 1
            break
    colour = next((w for i, w in enumerate(words) if w in COLOURS and i != background_at), None)
    shape = next((w for w in words if w in SHAPES), None)
    joined = " " + " ".join(words) + " "
    motion = None
    for phrase, name in sorted(_phrases().items(), key=lambda item: -len(item[0])):
        if f" {phrase} " in joined:
            motion = name
            break
    return {"colour": colour, "shape": shape,
            "background": words[background_at] if background_at is not None else None, "motion": motion}


# ----------------------------------------------------------------------------------------------------- datasets

def sample_clip(rng: np.random.Generator, size: int = 32, frames: int = 16, motion_phrase_prob: float = 0.5,
                *, supersample: int = 4, position_phrase: bool = False, **fixed) -> Clip:
    """Samples params (`fixed` as in `sample_params`) and renders them; the caption has a motion phrase with
    probability `motion_phrase_prob`, and a position phrase when `position_phrase` is true (it takes no draw)."""
    params = sample_params(rng, **fixed)
    with_phrase = bool(rng.random() < motion_phrase_prob)
    return render(params, size, frames, supersample=supersample, motion_phrase=with_phrase,
                  position_phrase=position_phrase)


def make_dataset(n: int, seed: int, size: int = 32, frames: int = 16, motion_phrase_prob: float = 0.5,
                 progress: bool = False, *, masks: bool = False, supersample: int = 4,
                 texture_prob: float = 0.0, light: float = 0.0, position_prob: float = 0.0) -> dict:
    """Renders n clips from `np.random.default_rng(seed)`; the same arguments give the same arrays.

    Every clip is lit with strength `light` (version 3 of the world); the light takes no random draw, so the
    clips are those of `light=0` under the light. A share `position_prob` of the captions say where the object
    starts (version 4: "a red circle moving left from top right on a white background"), drawn from a
    generator of their own, so the clips and the other captions' words are those of `position_prob=0`.

    Returns {"frames": (N, F, H, W, 3) uint8, "captions": list[str], "shape", "colour", "background",
    "motion": (N,) int64 indices into SHAPES, COLOURS, BACKGROUNDS, MOTIONS, "centres": (N, F, 2) float32 px,
    "sizes": (N, F) float32 px, "angles": (N, F) float32 rad, "params": list[ClipParams]}, plus
    "masks": (N, F, H, W) bool when `masks` is true.
    """
    rng = np.random.default_rng(seed)
    out = {
        "frames": np.empty((n, frames, size, size, 3), np.uint8),
        "captions": [],
        "shape": np.empty(n, np.int64),
        "colour": np.empty(n, np.int64),
        "background": np.empty(n, np.int64),
        "motion": np.empty(n, np.int64),
        "centres": np.empty((n, frames, 2), np.float32),
        "sizes": np.empty((n, frames), np.float32),
        "angles": np.empty((n, frames), np.float32),
        "params": [],
    }
    if masks:
        out["masks"] = np.empty((n, frames, size, size), bool)
    index = {"shape": SHAPES, "colour": tuple(COLOURS), "background": tuple(BACKGROUNDS), "motion": MOTIONS}
    positioned = np.random.default_rng([seed, 4]).random(n) < position_prob
    for i in tqdm(range(n), desc="world", disable=not progress, dynamic_ncols=True):
        clip = sample_clip(rng, size, frames, motion_phrase_prob, supersample=supersample,
                           texture_prob=texture_prob, light=light, position_phrase=bool(positioned[i]))
        out["frames"][i] = clip.frames
        out["centres"][i] = clip.centres
        out["sizes"][i] = clip.sizes
        out["angles"][i] = clip.angles
        out["captions"].append(clip.caption)
        out["params"].append(clip.params)
        for key, names in index.items():
            out[key][i] = names.index(getattr(clip.params, key))
        if masks:
            out["masks"][i] = clip.masks
    return out
