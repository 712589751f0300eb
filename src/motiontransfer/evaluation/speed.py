"""The speed benchmark: the reference recipe (`--preset reference`), ours, and plain sampling, on the same machine
in one run.

    motiontransfer bench-speed --seeds 2 --output-dir runs/perf

Rows are presets (`config.PRESETS`) and `plain`: plain sampling (`pipeline.text_to_video`: random initial latent,
no guidance, no inversion) of the same prompt at the same seed, the floor any guided recipe is measured against.
Source clips come from the shapes world at the model's own frame size; each target prompt has another shape and
another colour than its source (`world.other_looks`), on the same background. The rows alternate, each run in a
fresh process of its own (`multiprocessing`, spawn), so that peak memory is the run's: the peak resident set on
the CPU, `torch.cuda.max_memory_allocated` on CUDA. Then a frame sweep of ours.

Two ratios come from the one run: reference / default (our speed-up) and default / plain (what guidance costs over
plain sampling). Each row's UNet pass counts, weighted by the FLOPs of each pass kind at ZeroScope size
(`tools.passes`), also predict both ratios on a GPU at that size, without one. Writes perf.json and perf.md.
"""

from __future__ import annotations

import json
import multiprocessing
import resource
import time
from pathlib import Path
from typing import Mapping

import numpy as np
from tqdm.auto import tqdm

from ..config import PRESETS
from ..errors import ConfigError
from ..models import model_defaults
from ..shapes import world
from ..video import atomic_write_text

PLAIN = "plain"                                   # the row of plain sampling (pipeline.text_to_video)
ROWS = ("reference", "default", PLAIN)
PREDICTED_MODES = ("checkpoint", "none")          # activations predicted for: CUDA's auto first


def perf_prompt(params: world.ClipParams) -> str:
    """The first shape and the first colour other than the source's (`world.other_looks`), same background."""
    shapes, colours = world.other_looks(params)
    return world.plain_caption(colours[0], shapes[0], params.background)


def source_clip(seed: int, size: int, frames: int) -> world.Clip:
    return world.sample_clip(np.random.default_rng(seed), size=size, frames=frames)


def timed_transfer(row: str, seed: int, frames: int, size: int, model: str | None) -> tuple[dict, np.ndarray]:
    """One run of `row` (a preset, or `plain`), as a fresh process runs it: timings, UNet counts, the peak memory
    of the process, and the result's frames (F, H, W, 3) uint8."""
    import torch

    from ..pipeline import text_to_video, transfer

    clip = source_clip(seed, size, frames)
    prompt = perf_prompt(clip.params)
    start = time.perf_counter()
    if row == PLAIN:
        r = text_to_video(prompt, quiet=True, seed=seed, frames=frames, model=model)
    else:
        r = transfer(clip.frames, prompt, output_dir=False, quiet=True, preset=row, seed=seed, frames=frames,
                     use_cache=False, model=model)
    seconds = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated() if torch.cuda.is_available() else \
        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"row": row, "seed": seed, "frames": frames, "seconds": seconds, "prompt": prompt,
            "timings_s": r.timings, "counts": r.counts, "peak_bytes": peak}, r.frames


def _in_fresh_process(fn, *args):
    """`fn(*args)` in a new interpreter (spawned, not forked: nothing of this process's memory comes along)."""
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(fn, args)


def check_rows(rows: tuple[str, ...]) -> tuple[str, ...]:
    rows = tuple(rows)
    unknown = [r for r in rows if r not in PRESETS and r != PLAIN]
    if unknown or len(set(rows)) != len(rows) or "default" not in rows:
        raise ConfigError(f"rows must be distinct presets ({', '.join(PRESETS)}) or {PLAIN}, default among them; "
                          f"got {', '.join(rows)}")
    return rows


def bench_speed(output_dir: str | Path, *, seeds: int = 3, frames: tuple[int, ...] = (8, 16, 24, 32),
                pair_frames: int = 16, model: str | None = None, rows: tuple[str, ...] = ROWS,
                pass_flops: Mapping[str, Mapping[str, int]] | None = None, quiet: bool = False) -> dict:
    """Each of `rows` on `model` (default: the shipped one) for `seeds` source clips, alternating, each run in its
    own process (so that peak memory is per run); then a frame sweep of ours. Reports ratios measured in the same
    run and the ones the pass counts predict at ZeroScope size; writes perf.json and perf.md (`perf_table`).

    `pass_flops`: FLOPs per pass kind for each activations mode of `PREDICTED_MODES` (default:
    `tools.passes.pass_flops` at ZeroScope size)."""
    from ..shapes.classifier import attribute_fidelity
    from .metrics import score_videos

    rows = check_rows(rows)
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    size = model_defaults(model).width
    runs = []
    plan = [(r, s, pair_frames) for s in range(seeds) for r in rows] + [("default", 0, f) for f in frames]
    for row, seed, count in tqdm(plan, desc="perf", disable=quiet, dynamic_ncols=True):
        record, edited = _in_fresh_process(timed_transfer, row, seed, count, size, model)
        np.save(out / f"{row}-{seed}-{count}.npy", edited)
        clip = source_clip(seed, size, count)
        record["motion_fidelity"] = score_videos(clip.frames, edited)["motion_fidelity"]
        record["text_fidelity"] = attribute_fidelity(edited, record["prompt"])["score"]
        runs.append(record)
    paired = runs[:len(rows) * seeds]
    means = {name: row_summary([r for r in paired if r["row"] == name]) for name in rows}
    summary = {"rows": means, **{f"{name}_s": m["seconds"] for name, m in means.items()},
               "speedup": _ratio(means, "reference", "default"), "default_over_plain": _ratio(means, "default", PLAIN),
               "predicted": predict(means, pass_flops),
               "sweep": [{"frames": r["frames"], "seconds": r["seconds"], "peak_mb": r["peak_bytes"] / 2**20}
                         for r in runs[len(paired):]],
               "runs": runs}
    atomic_write_text(out / "perf.json", json.dumps(summary, indent=2))
    atomic_write_text(out / "perf.md", perf_table(summary))
    return summary


def row_summary(records: list[dict]) -> dict:
    """Means over a row's runs: seconds, the inversion and sampling phases, UNet counts, peak MB, fidelities."""
    return {"seconds": _avg(records, "seconds"),
            "inversion_s": float(np.mean([r["timings_s"].get("inversion", 0.0) for r in records])),
            "sampling_s": float(np.mean([r["timings_s"].get("sampling", 0.0) for r in records])),
            "counts": {k: float(np.mean([r["counts"][k] for r in records])) for k in records[0]["counts"]},
            "peak_mb": _avg(records, "peak_bytes") / 2**20, "motion_fidelity": _measured_mean(records),
            "motion_fidelity_not_measured": sum(r["motion_fidelity"] is None for r in records),
            "text_fidelity": _avg(records, "text_fidelity")}


def predict(rows: dict[str, dict], pass_flops: Mapping[str, Mapping[str, int]] | None = None) -> dict:
    """Per activations mode (`PREDICTED_MODES`): the FLOPs of each pass kind at ZeroScope size (tera), each row's
    predicted time over the default's, and the two ratios."""
    from ..tools import passes, zeroscope

    predicted = {"frames": zeroscope.FRAMES, "width": zeroscope.WIDTH, "height": zeroscope.HEIGHT}
    for mode in PREDICTED_MODES:
        flops = (pass_flops or {}).get(mode) or passes.pass_flops(activations=mode)
        over_default = {name: passes.predicted_seconds_ratio(r["counts"], rows["default"]["counts"], flops)
                        for name, r in rows.items()}
        predicted[mode] = {"tflops": {k: flops[k] / 1e12 for k in passes.PASSES}, "over_default": over_default,
                           "speedup": over_default.get("reference"),
                           "default_over_plain": 1 / over_default[PLAIN] if PLAIN in over_default else None}
    return predicted


def _ratio(rows: dict[str, dict], a: str, b: str) -> float | None:
    return rows[a]["seconds"] / rows[b]["seconds"] if a in rows and b in rows else None


def _avg(records: list[dict], key: str) -> float:
    return float(np.mean([r[key] for r in records]))


def _measured_mean(records: list[dict]) -> float | None:
    """The mean motion fidelity over the runs that could be measured (None when none could)."""
    values = [r["motion_fidelity"] for r in records if r["motion_fidelity"] is not None]
    return float(np.mean(values)) if values else None


def _score_cell(row: dict) -> str:
    skipped = row.get("motion_fidelity_not_measured", 0)
    cell = "not measured" if row["motion_fidelity"] is None else f"{row['motion_fidelity']:.3f}"
    return cell + (f" ({skipped} not measured)" if skipped and row["motion_fidelity"] is not None else "")


def _times(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def perf_table(summary: dict) -> str:
    """`bench_speed`'s summary as markdown: the rows, the measured and predicted ratios, the frame sweep."""
    rows, predicted = summary["rows"], summary["predicted"]
    cuda = predicted[PREDICTED_MODES[0]]
    lines = ["| row | s / video | x default | inversion s | sampling s | UNet fwd | truncated fwd | bwd | peak MB | "
             "motion fidelity | text fidelity | predicted x default |", "|---" * 12 + "|"]
    for name, r in rows.items():
        c = r["counts"]
        lines.append(f"| {name} | {r['seconds']:.1f} | {r['seconds'] / rows['default']['seconds']:.2f} | "
                     f"{r['inversion_s']:.1f} | {r['sampling_s']:.1f} | {c['unet_forward']:.0f} | "
                     f"{c['unet_truncated_forward']:.0f} | {c['unet_backward']:.0f} | {r['peak_mb']:.0f} | "
                     f"{_score_cell(r)} | {r['text_fidelity']:.3f} | {cuda['over_default'][name]:.2f} |")
    size = f"{predicted['frames']} frames, {predicted['width']}x{predicted['height']}"
    lines += ["", f"measured: reference/default {_times(summary['speedup'])} (speed-up), "
                  f"default/plain {_times(summary['default_over_plain'])} (cost over plain sampling)",
              f"predicted at ZeroScope size ({size}, CUDA with activation checkpointing): "
              f"reference/default {_times(cuda['speedup'])}, default/plain {_times(cuda['default_over_plain'])}"]
    for mode in PREDICTED_MODES[1:]:
        p = predicted[mode]
        lines.append(f"predicted there with --activations {mode}: reference/default {_times(p['speedup'])}, "
                     f"default/plain {_times(p['default_over_plain'])}")
    tflops = ", ".join(f"{k} {v:.2f}" for k, v in cuda["tflops"].items())
    lines += [f"(TFLOPs per pass there: {tflops}; predicted x default weights each row's UNet passes by them)",
              "", "| frames | s / video | peak MB |", "|---|---|---|"]
    lines += [f"| {s['frames']} | {s['seconds']:.1f} | {s['peak_mb']:.0f} |" for s in summary["sweep"]]
    return "\n".join(lines) + "\n"


__all__ = ["bench_speed", "perf_table", "perf_prompt", "timed_transfer", "predict", "ROWS", "PLAIN"]
