"""The benchmark suite: the paper's comparison (motion fidelity against text fidelity, Fig. 8) over cases.

    motiontransfer bench --suite shapes --output-dir runs/bench          # the shipped suite
    motiontransfer bench --suite my_suite.yaml --methods full sdedit_0.6 --output-dir runs/mine

Suite format (YAML; paths relative to the file):

    name: my-suite
    model: null                    # optional: a model folder or hub id for every case (default: shipped)
    text_fidelity: clip            # clip (CLIP text-frame similarity) or attributes (the shapes world's classifier)
    clip_model: openai/clip-vit-base-patch32
    tracker: flow                  # optional: flow (the default of every front end), lk or cotracker; metrics.py
    options: {steps: 50}           # optional TransferConfig fields applied to every method
    cases:
      - name: car-to-bike          # optional; default case-NN
        video: videos/car.mp4      # or  world: {seed: 3}  (a clip of the shapes world, 16 frames at the model's size)
        prompt: a bike on a road
        source_prompt: a car       # optional
        box: [10, 20, 200, 150]    # optional first-frame box of the object (x0, y0, x1, y1 pixels) for scoring

Without a box a case is scored on the whole frame, as `motiontransfer score` and every other front end score
it (`metrics.score_videos` with its defaults), so a bench result and the same pair scored elsewhere agree.
A result that could not be measured counts in no mean; each row says how many were left out.

Every (case, method) result is written to `cases/<case>/<method>.json` as soon as it is done; a second run
skips what is there (resumable). The summary goes to results.json, results.md and scatter.png. With `--ray`
the (case, method) pairs run as Ray tasks (`engine.run_tasks`), on a local cluster or a remote one.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from tqdm.auto import tqdm

from ..errors import ConfigError
from ..models import model_defaults
from .metrics import DEFAULT_GRID, DEFAULT_TRACKER
from ..video import atomic_path, atomic_write_text, read_video, write_video

logger = logging.getLogger(__name__)

# name -> TransferConfig changes. "full" is the method with our defaults; the rest are its ablations and
# the baselines of the paper's comparison.
METHODS: dict[str, dict[str, Any]] = {
    "full": {},
    "no_guidance": {"iterations": 0},                                  # LF init (Eq. 4) alone
    "random_init": {"init": "random"},                                 # guidance from pure noise
    "smm_loss": {"loss": "smm"},                                       # direct SMM, no pairwise differences
    "feature_loss": {"loss": "features"},                              # full space-time features
    "sdedit_0.6": {"init": "sdedit", "sdedit_strength": 0.6, "iterations": 0},
    "sdedit_0.9": {"init": "sdedit", "sdedit_strength": 0.9, "iterations": 0},
    "t2v": {"init": "random", "iterations": 0},                        # plain text-to-video
}
SUITES_DIR = Path(__file__).parent / "suites"


@dataclass
class Case:
    name: str
    frames: np.ndarray            # (F, H, W, 3) uint8
    fps: float
    prompt: str
    source_prompt: str = ""
    box: tuple[float, float, float, float] | None = None
    centres: np.ndarray | None = None     # (F, 2) ground-truth object centres, for world cases


def load_suite(suite: str | Path, model: str | None = None) -> tuple[dict, list[Case]]:
    """The suite's spec and cases; `model` (a folder or hub id) replaces the suite's own, and world cases are
    rendered at its size."""
    path = SUITES_DIR / f"{suite}.yaml" if str(suite) in {p.stem for p in SUITES_DIR.glob("*.yaml")} else Path(suite)
    if not path.exists():
        raise ConfigError(f"suite {suite} not found: give a YAML file or one of "
                          f"{', '.join(p.stem for p in SUITES_DIR.glob('*.yaml'))}")
    spec = yaml.safe_load(path.read_text()) or {}
    known = {"name", "model", "text_fidelity", "clip_model", "tracker", "options", "cases"}
    unknown = set(spec) - known
    if unknown:
        raise ConfigError(f"unknown key(s) in suite {path}: {', '.join(sorted(unknown))}")
    if model is not None:
        spec["model"] = str(model)
    if spec.get("text_fidelity", "clip") not in ("clip", "attributes"):
        raise ConfigError("text_fidelity must be clip or attributes")
    cases = []
    for i, c in enumerate(spec.get("cases") or []):
        name = str(c.get("name", f"case-{i:02d}"))
        if "prompt" not in c:
            raise ConfigError(f"case {name} in {path} has no prompt")
        centres = None
        if "world" in c:
            from ..shapes import world

            w = dict(c["world"])
            size = int(w.pop("size")) if "size" in w else model_defaults(spec.get("model")).width
            count = int(w.pop("frames", 16))
            clip = world.sample_clip(np.random.default_rng(int(w.pop("seed"))), size=size, frames=count, **w)
            frames, fps, centres, box = clip.frames, 8.0, clip.centres, c.get("box")
        elif "video" in c:
            video = read_video(path.parent / c["video"])
            frames, fps, box = video.frames, video.fps, c.get("box")
        else:
            raise ConfigError(f"case {name} in {path} needs `video` or `world`")
        cases.append(Case(name=name, frames=frames, fps=fps, prompt=str(c["prompt"]),
                          source_prompt=str(c.get("source_prompt", "")),
                          box=tuple(float(v) for v in box) if box is not None else None, centres=centres))
    if not cases:
        raise ConfigError(f"suite {path} has no cases")
    return spec, cases


def score_case(case: Case, frames: np.ndarray, spec: dict, grid: int = DEFAULT_GRID) -> dict:
    """Motion fidelity against the source, text fidelity, and for world cases the object's trajectory."""
    from .metrics import clip_text_similarity, score_videos

    source = case.frames[:len(frames)]
    scores: dict[str, Any] = {}
    mf = score_videos(source, frames, grid=grid, box=case.box, tracker=spec.get("tracker", DEFAULT_TRACKER))
    scores["motion_fidelity"] = mf["motion_fidelity"]
    scores["motion_fidelity_one_sided"] = mf["motion_fidelity_one_sided"]
    if mf["reason"]:
        scores["motion_fidelity_reason"] = mf["reason"]
    if spec.get("text_fidelity", "clip") == "attributes":
        from ..shapes.classifier import attribute_fidelity
        from ..shapes.tracking import object_track, trajectory_agreement

        fid = attribute_fidelity(frames, case.prompt)
        scores["text_fidelity"] = fid["score"]
        scores.update({k: fid[k] for k in ("colour_ok", "shape_ok", "background_ok")})
        if case.centres is not None:
            agree = trajectory_agreement(case.centres[:len(frames)], object_track(frames))
            scores["velocity_cosine"] = agree["velocity_cosine"]
            scores["centre_error_px"] = agree["centre_error"]
    else:
        clip = clip_text_similarity(frames, case.prompt, model=spec.get("clip_model",
                                                                        "openai/clip-vit-base-patch32"))
        scores["text_fidelity"] = clip["clip_score"]
        scores["clip_model"] = clip["clip_model"]
    return scores


def case_options(spec: dict, method: str) -> dict:
    """The transfer options of one method on this suite: the suite's, the method's changes, the model."""
    options = {**(spec.get("options") or {}), **METHODS[method]}
    if spec.get("model") is not None:
        options["model"] = spec["model"]
    return options


def run_case(case: Case, method: str, spec: dict, seed: int) -> tuple[dict, np.ndarray]:
    from ..pipeline import transfer

    options = case_options(spec, method)
    start = time.perf_counter()
    result = transfer(case.frames, case.prompt, output_dir=False, quiet=True, fps=case.fps, seed=seed,
                      source_prompt=case.source_prompt, **options)
    seconds = time.perf_counter() - start
    return {"case": case.name, "method": method, "prompt": case.prompt, "seed": seed, "seconds": round(seconds, 3),
            "timings_s": {k: round(v, 3) for k, v in result.timings.items()}, "counts": result.counts,
            "options": options}, result.frames


def summarise(records: list[dict], methods: list[str]) -> list[dict]:
    rows = []
    for m in methods:
        rs = [r for r in records if r["method"] == m]
        if not rs:
            continue

        def mean(key):
            values = [float(r[key]) for r in rs if r.get(key) is not None and np.isfinite(float(r[key]))]
            return float(np.mean(values)) if values else None

        measured = [float(r["motion_fidelity"]) for r in rs if r.get("motion_fidelity") is not None]
        row = {"method": m, "cases": len(rs), "motion_fidelity": mean("motion_fidelity"),
               "motion_fidelity_std": float(np.std(measured)) if measured else None,
               "motion_fidelity_not_measured": len(rs) - len(measured),
               "text_fidelity": mean("text_fidelity"), "seconds": mean("seconds"),
               "unet_forward": mean_count(rs, "unet_forward"), "unet_truncated_forward":
                   mean_count(rs, "unet_truncated_forward"), "unet_backward": mean_count(rs, "unet_backward")}
        for key in ("colour_ok", "shape_ok", "background_ok", "velocity_cosine", "centre_error_px"):
            value = mean(key)
            if value is not None:
                row[key] = value
        rows.append(row)
    return rows


def mean_count(records: list[dict], key: str) -> float:
    return float(np.mean([r["counts"][key] for r in records]))


def markdown_table(rows: list[dict], text_kind: str) -> str:
    text_label = "attribute accuracy" if text_kind == "attributes" else "CLIP score"
    head = ["method", "cases", "motion fidelity", f"text fidelity ({text_label})"]
    extra = [k for k in ("colour_ok", "shape_ok", "velocity_cosine", "centre_error_px") if k in rows[0]]
    head += [{"colour_ok": "colour %", "shape_ok": "shape %", "velocity_cosine": "velocity cos",
              "centre_error_px": "centre error px"}[k] for k in extra]
    head += ["s / video", "UNet fwd", "truncated fwd", "bwd"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["method"], str(r["cases"]), _mean_cell(r), "" if r["text_fidelity"] is None
                 else f"{r['text_fidelity']:.3f}"]
        for k in extra:
            v = r.get(k)
            cells.append("" if v is None else f"{100 * v:.0f}" if k.endswith("_ok") else f"{v:.2f}")
        cells += [f"{r['seconds']:.1f}", f"{r['unet_forward']:.0f}", f"{r['unet_truncated_forward']:.0f}",
                  f"{r['unet_backward']:.0f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _mean_cell(row: dict) -> str:
    """"0.650 ± 0.120", "... (2 not measured)", or "not measured" when no case was."""
    skipped = row.get("motion_fidelity_not_measured", 0)
    if row["motion_fidelity"] is None:
        return "not measured"
    cell = f"{row['motion_fidelity']:.3f} ± {row['motion_fidelity_std']:.3f}"
    return cell + (f" ({skipped} not measured)" if skipped else "")


def scatter(rows: list[dict], path: Path, title: str, text_kind: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.8, 4.2), dpi=120)
    markers = "ovsD^<>pPhX"
    for i, r in enumerate(rows):                    # a legend, not labels: methods often sit on top of each other
        if r["motion_fidelity"] is None or r["text_fidelity"] is None:
            continue
        full = r["method"] == "full"
        ax.scatter(r["text_fidelity"], r["motion_fidelity"], s=110 if full else 45, marker="*" if full else
                   markers[i % len(markers)], zorder=4 if full else 3, alpha=0.85, label=r["method"])
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.02, 0.5), frameon=False)
    ax.set_xlabel("text fidelity (" + ("attribute accuracy" if text_kind == "attributes" else "CLIP score") + ")")
    ax.set_ylabel("motion fidelity")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp)
    plt.close(fig)


def bench_task(item: tuple[Case, str, dict, int, int, str]) -> dict:
    """One (case, method, spec, seed, grid, output folder): run, score, write `cases/<case>/<method>.json` (and
    its video), return the record. The job function of `engine.run_tasks`, here and in a Ray worker alike."""
    case, method, spec, seed, grid, out = item
    record, frames = run_case(case, method, spec, seed)
    record.update(score_case(case, frames, spec, grid))
    path = Path(out) / "cases" / case.name / f"{method}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    write_video(path.with_suffix(".mp4"), frames, case.fps, min_size=128)
    atomic_write_text(path, json.dumps(record, indent=2))
    return record


def bench_suite(suite: str | Path, output_dir: str | Path, *, methods: list[str] | None = None,
                limit: int | None = None, seed: int = 0, grid: int = DEFAULT_GRID, quiet: bool = False,
                options: dict | None = None, model: str | None = None, ray_address: str | None = None,
                ray_init: dict | None = None) -> dict:
    """Runs every case through every method, scores them, and writes results.json/.md and scatter.png.

    Each finished (case, method) is kept (`cases/<case>/<method>.json`) and not run again. The pairs run one
    after another here, or with `ray_address` as Ray tasks on a cluster (`engine.run_tasks`: "local" starts one
    on this machine, one task per CPU or GPU; `ray_init` goes to `ray.init`), with the same outputs. `options`
    (TransferConfig fields) override the suite's `options`; each method's own changes still apply on top.
    `model` replaces the suite's model. A kept result made with other options or another seed is an error, not
    a silent mix: give another output folder.

    Returns the summary: suite, cases, methods, seed, grid, text_fidelity ("clip" or "attributes"), rows (per
    method) and records (per case and method)."""
    from ..engine import run_tasks

    methods = methods or list(METHODS)
    bad = [m for m in methods if m not in METHODS]
    if bad:
        raise ConfigError(f"unknown method(s) {', '.join(bad)}; choose from {', '.join(METHODS)}")
    spec, cases = load_suite(suite, model=model)
    if options:
        spec["options"] = {**(spec.get("options") or {}), **options}
    cases = cases[:limit] if limit else cases
    out = Path(output_dir)
    (out / "cases").mkdir(parents=True, exist_ok=True)
    done: dict[tuple[str, str], dict] = {}
    todo = []
    for case in cases:
        for method in methods:
            path = out / "cases" / case.name / f"{method}.json"
            if path.exists():
                kept = json.loads(path.read_text())
                wanted = json.loads(json.dumps(case_options(spec, method), default=str))
                if kept.get("options") != wanted or kept.get("seed") != seed:
                    raise ConfigError(f"{path} was made with other settings (options {kept.get('options')}, seed "
                                      f"{kept.get('seed')}) than this run's ({wanted}, seed {seed}): give another "
                                      f"--output-dir, or delete it to run it again")
                done[case.name, method] = kept
            else:
                todo.append((case, method, spec, seed, grid, str(out)))
    with tqdm(total=len(todo), desc="bench", disable=quiet, dynamic_ncols=True) as bar:
        for (case, method, *_), outcome in run_tasks(bench_task, todo, ray_address=ray_address, ray_init=ray_init):
            if isinstance(outcome, BaseException):
                raise outcome
            done[case.name, method] = outcome
            bar.update()
    records = [done[c.name, m] for c in cases for m in methods]
    text_kind = spec.get("text_fidelity", "clip")
    summary = {"suite": spec.get("name", str(suite)), "cases": len(cases), "methods": methods,
               "seed": seed, "grid": grid, "text_fidelity": text_kind, "rows": None, "records": records}
    summary["rows"] = rows = summarise(records, methods)
    atomic_write_text(out / "results.json", json.dumps(summary, indent=2))
    atomic_write_text(out / "results.md", markdown_table(rows, text_kind))
    scatter(rows, out / "scatter.png", f"{summary['suite']}: {len(cases)} cases", text_kind)
    return summary

__all__ = ["METHODS", "Case", "bench_suite", "bench_task", "case_options", "load_suite", "markdown_table",
           "score_case", "run_case"]
