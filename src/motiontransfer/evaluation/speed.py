"""The speed benchmark: the reference recipe (`--preset reference`) against ours, on the same machine in one run.

    motiontransfer bench-speed --seeds 2 --output-dir runs/perf

Source clips come from the shapes world at the model's own frame size; each target prompt has another shape and
another colour than its source (`world.other_looks`), on the same background. The presets alternate, each run in
a fresh process of its own (`multiprocessing`, spawn), so that peak memory is the run's: the peak resident set
on the CPU, `torch.cuda.max_memory_allocated` on CUDA. Then a frame sweep of ours. Writes perf.json and perf.md.
"""

from __future__ import annotations

import json
import multiprocessing
import resource
import time
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from ..models import model_defaults
from ..shapes import world
from ..video import atomic_write_text


def perf_prompt(params: world.ClipParams) -> str:
    """The first shape and the first colour other than the source's (`world.other_looks`), same background."""
    shapes, colours = world.other_looks(params)
    return world.plain_caption(colours[0], shapes[0], params.background)


def source_clip(seed: int, size: int, frames: int) -> world.Clip:
    return world.sample_clip(np.random.default_rng(seed), size=size, frames=frames)


def timed_transfer(preset: str, seed: int, frames: int, size: int, model: str | None) -> tuple[dict, np.ndarray]:
    """One transfer, as a fresh process runs it: timings, UNet counts, the peak memory of the process, and the
    result's frames (F, H, W, 3) uint8."""
    import torch

    from ..pipeline import transfer

    clip = source_clip(seed, size, frames)
    prompt = perf_prompt(clip.params)
    start = time.perf_counter()
    r = transfer(clip.frames, prompt, output_dir=False, quiet=True, preset=preset, seed=seed, frames=frames,
                 use_cache=False, model=model)
    seconds = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated() if torch.cuda.is_available() else \
        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"preset": preset, "seed": seed, "frames": frames, "seconds": seconds, "prompt": prompt,
            "timings_s": r.timings, "counts": r.counts, "peak_bytes": peak}, r.frames


def _in_fresh_process(fn, *args):
    """`fn(*args)` in a new interpreter (spawned, not forked: nothing of this process's memory comes along)."""
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(fn, args)


def bench_speed(output_dir: str | Path, *, seeds: int = 3, frames: tuple[int, ...] = (8, 16, 24, 32),
                pair_frames: int = 16, model: str | None = None, quiet: bool = False) -> dict:
    """Reference preset against ours on `model` (default: the shipped one), alternating, each run in its own
    process (so that peak memory is per run); then a frame sweep of ours. Reports ratios measured in the same
    run; writes perf.json and perf.md (`perf_table`)."""
    from ..shapes.classifier import attribute_fidelity
    from .metrics import score_videos

    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    size = model_defaults(model).width
    runs = []
    plan = [(p, s, pair_frames) for s in range(seeds) for p in ("reference", "default")] + \
           [("default", 0, f) for f in frames]
    for preset, seed, count in tqdm(plan, desc="perf", disable=quiet, dynamic_ncols=True):
        record, edited = _in_fresh_process(timed_transfer, preset, seed, count, size, model)
        np.save(out / f"{preset}-{seed}-{count}.npy", edited)
        clip = source_clip(seed, size, count)
        record["motion_fidelity"] = score_videos(clip.frames, edited, grid=30, tracker="flow")["motion_fidelity"]
        record["text_fidelity"] = attribute_fidelity(edited, record["prompt"])["score"]
        runs.append(record)
    ref = [r for r in runs[:2 * seeds] if r["preset"] == "reference"]
    ours = [r for r in runs[:2 * seeds] if r["preset"] == "default"]
    summary = {
        "reference_s": _avg(ref, "seconds"), "default_s": _avg(ours, "seconds"),
        "speedup": _avg(ref, "seconds") / _avg(ours, "seconds"),
        "reference_motion_fidelity": _avg(ref, "motion_fidelity"),
        "default_motion_fidelity": _avg(ours, "motion_fidelity"),
        "reference_text_fidelity": _avg(ref, "text_fidelity"), "default_text_fidelity": _avg(ours, "text_fidelity"),
        "reference_peak_mb": _avg(ref, "peak_bytes") / 2**20, "default_peak_mb": _avg(ours, "peak_bytes") / 2**20,
        "sweep": [{"frames": r["frames"], "seconds": r["seconds"], "peak_mb": r["peak_bytes"] / 2**20}
                  for r in runs[2 * seeds:]],
        "runs": runs,
    }
    atomic_write_text(out / "perf.json", json.dumps(summary, indent=2))
    atomic_write_text(out / "perf.md", perf_table(summary))
    return summary


def _avg(records: list[dict], key: str) -> float:
    return float(np.mean([r[key] for r in records]))


def perf_table(summary: dict) -> str:
    """`bench_speed`'s summary as markdown: the two presets, the speed-up, the frame sweep."""
    lines = ["| preset | s / video | inversion s | sampling s | UNet fwd | truncated fwd | bwd | peak MB | "
             "motion fidelity | text fidelity |", "|---|---|---|---|---|---|---|---|---|---|"]
    pairs = summary["runs"][:len(summary["runs"]) - len(summary["sweep"])]
    for name in ("reference", "default"):
        rs = [r for r in pairs if r["preset"] == name]
        lines.append(f"| {name} | {_avg(rs, 'seconds'):.1f} | "
                     f"{np.mean([r['timings_s'].get('inversion', 0) for r in rs]):.1f} | "
                     f"{np.mean([r['timings_s'].get('sampling', 0) for r in rs]):.1f} | "
                     f"{np.mean([r['counts']['unet_forward'] for r in rs]):.0f} | "
                     f"{np.mean([r['counts']['unet_truncated_forward'] for r in rs]):.0f} | "
                     f"{np.mean([r['counts']['unet_backward'] for r in rs]):.0f} | "
                     f"{_avg(rs, 'peak_bytes') / 2**20:.0f} | {_avg(rs, 'motion_fidelity'):.3f} | "
                     f"{_avg(rs, 'text_fidelity'):.3f} |")
    lines += ["", f"speed-up (reference / default): {summary['speedup']:.2f}x", "",
              "| frames | s / video | peak MB |", "|---|---|---|"]
    lines += [f"| {s['frames']} | {s['seconds']:.1f} | {s['peak_mb']:.0f} |" for s in summary["sweep"]]
    return "\n".join(lines) + "\n"


__all__ = ["bench_speed", "perf_table", "perf_prompt", "timed_transfer"]
