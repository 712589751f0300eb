"""What still separates `--preset reference` from the reference implementation, measured on the shipped model over
several draws.

    OMP_NUM_THREADS=1 python benchmarks/reference_gaps.py [--draws 5] [--first-seed 0] [--json FILE] [--rows TEXT ...]

A draw is one seed s: the source clip of the shapes world that `motiontransfer bench-speed` uses for s (16 frames
of 32x32, its target prompt), transferred with `--preset reference` and seed s (the VAE sample, the initial
noise, the restart noise): the draw's baseline. Every row changes one thing and reports how far its result lies
from the baseline of the same draw: the relative difference of the final latent, ||x0 - x0_base|| / ||x0_base||,
and the mean absolute difference of the decoded frames in 1/255. The sampler amplifies a change by an amount
that depends on the draw, so each row is summarised by its median and range over the draws.

Rows (those the default run measures are marked *):
- what still differs, each done the reference's way here (by patching our functions for this run only):
  * `inversion to 999`   the reference inverts to t = 999 and builds its initial latent from x_999: the noise it
                         implies, eps = (x_999 - sqrt(a_999) x0') / sqrt(1 - a_999), put back on x0' at t = 981
                         (before the LF filter), where x0' is a second, independent VAE posterior sample; ours
                         takes x_981 from the inversion. `(same x0)` uses the inverted sample as x0';
  * `restart 20 noises`  the reference re-noises from t-20 to t in 20 steps of one beta each, with fresh noise
                         each and betas[t-20 .. t-1] (one index lower than the exact forward process), here
                         drawn from the run's generator; ours draws one noise at the exact level
                         alphas_cumprod[t] / alphas_cumprod[t-20];
  * `restart level only` our one noise at the reference's level, prod(1 - betas[t-20 .. t-1]);
  * `loss with i = j`    the reference's pairwise cosine averages over all F frames j, the zero pair i = j
                         included (cosine 0), so its loss is 1/F + (F-1)/F x ours and its gradient (F-1)/F x ours;
- what the preset reproduces, switched back to ours one at a time:
  * `8-bit by rounding`  the baseline's own final latent decoded with `quantize: round` (the preset truncates,
                         as the reference does); no extra run;
    `lf_filter: lowpass`, `vae_encode: mean`, `negative prompt of the model` (""), and `all three`;
- for scale:
  * `restart noise from another stream`   nothing else changed;
    `seed + 1`            the whole run under the next seed (another VAE sample, so another inversion).

`--rows` picks rows by name (any row above; `all` for every one). `baseline again` runs the baseline a second
time (from the inversion cache) and checks it is bit-identical.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import statistics
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from unittest import mock

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler

from motiontransfer import losses, pipeline
from motiontransfer.config import PRESETS, TransferConfig
from motiontransfer.evaluation.speed import perf_prompt, source_clip
from motiontransfer.schedules import DDIMSchedule

INVERSION_END = 999          # where the reference's 999-step inversion stops
DEFAULT_ROWS = ("inversion to 999", "restart 20 noises", "restart level only", "loss with i = j",
                "8-bit by rounding", "restart noise from another stream")


# -------------------------------------------------------------------------------- the reference's ways, as patches

def inversion_to_the_end(end: int):
    """The preset's inversion carried on to t = INVERSION_END in the same pass; x_999 is kept under step index
    `end` (one past the sampling steps), so every run of a draw reads it from the same cache entry."""
    invert = pipeline.invert_latent

    def invert_latent(predict, x0, schedule, steps, keep, **kwargs):
        extended = copy.copy(schedule)              # its inversion plan maps timesteps to indices: add one more
        extended.timesteps = [*schedule.timesteps, INVERSION_END]
        return invert(predict, x0, extended, steps, [*keep, end], **kwargs)

    return [(pipeline, "invert_latent", invert_latent)]


def reference_start(end: int, second_sample: bool):
    """The initial latent from x_999's noise, put back at the first sampling step on a VAE sample (Eq. 4's LF
    filter then runs on it as on ours)."""
    start = pipeline.start_latent

    def start_latent(model, source, config, inverted, schedule, generator):
        x0 = pipeline.encode_source(model, source.frames, config)            # the sample that was inverted
        if second_sample:
            x0 = model.encode_frames(source.frames, generator=pipeline.stream_generator(config.seed, "second sample"))
        a_end = schedule.alphas_cumprod[INVERSION_END]
        eps = (inverted.latents[end] - a_end.sqrt() * x0) / (1 - a_end).sqrt()
        x_first = schedule.add_noise(x0, eps, 0)
        return start(model, source, config, dataclasses.replace(inverted, latents={**inverted.latents, 0: x_first}),
                     schedule, generator)

    return [(pipeline, "start_latent", start_latent)]


def reference_renoise(betas: torch.Tensor, twenty_noises: bool):
    """The restart from the level step i reached back up to timesteps[i], over betas[t-20 .. t-1]: twenty
    one-beta steps with fresh noise each, or (`twenty_noises=False`) one noise at their product's level."""
    def renoise(self, x_next, i, generator):
        t = self.timesteps[i]
        steps = betas[t - self.num_train_timesteps // self.steps:t]

        def noise():
            return torch.randn(x_next.shape, generator=generator, dtype=torch.float32).to(x_next.device,
                                                                                          x_next.dtype)
        if not twenty_noises:
            level = torch.prod(1 - steps).to(x_next.dtype)
            return level.sqrt() * x_next + (1 - level).sqrt() * noise()
        x = x_next
        for beta in steps.to(x_next.dtype):
            x = (1 - beta).sqrt() * x + beta.sqrt() * noise()
        return x

    return [(DDIMSchedule, "renoise", renoise)]


def other_restart_stream(seed: int):
    ours = DDIMSchedule.renoise
    other = torch.Generator().manual_seed(seed + 10_000)
    return [(DDIMSchedule, "renoise", lambda self, x, i, generator: ours(self, x, i, other))]


def reference_cosine(phi_src, phi_gen, eps=1e-8):
    """The mean over all j, the pair i = j (cosine 0) included."""
    cos = F.cosine_similarity(losses.pairwise_differences(phi_gen), losses.pairwise_differences(phi_src),
                              dim=-1, eps=eps)
    return (1 - cos.mean(-1)).mean()


def rows_of_a_draw(seed: int, betas: torch.Tensor, end: int) -> dict[str, dict]:
    """name -> {"patches": [(target, attribute, value)], "options": {...}}, or {"decode": quantize}: the
    baseline's final latent decoded again with that 8-bit conversion, no run."""
    return {
        "baseline again": {},
        "inversion to 999": {"patches": reference_start(end, True)},
        "inversion to 999 (same x0)": {"patches": reference_start(end, False)},
        "restart 20 noises": {"patches": reference_renoise(betas, True)},
        "restart level only": {"patches": reference_renoise(betas, False)},
        "loss with i = j": {"patches": [(losses, "pairwise_cosine", reference_cosine)]},
        "8-bit by rounding": {"decode": "round"},
        "lf_filter: lowpass": {"options": {"lf_filter": "lowpass"}},
        "vae_encode: mean": {"options": {"vae_encode": "mean"}},
        "negative prompt of the model": {"options": {"negative_prompt": ""}},
        "all three (the preset before issue 16)": {"options": {"lf_filter": "lowpass", "vae_encode": "mean",
                                                               "negative_prompt": ""}},
        "restart noise from another stream": {"patches": other_restart_stream(seed)},
        "seed + 1": {"options": {"seed": seed + 1}},
    }


# -------------------------------------------------------------------------------------------------------- runs

def measure_draw(seed: int, wanted: list[str], cache_dir: str) -> dict:
    clip = source_clip(seed, size=32, frames=16)
    prompt = perf_prompt(clip.params)
    model = pipeline.get_model(TransferConfig())
    schedule = model.schedule(PRESETS["reference"]["steps"])
    end = len(schedule.timesteps)                       # the step index x_999 is kept under
    betas = DDIMScheduler.from_config(schedule.config).betas
    final = {}
    sample = pipeline.guided_sample

    def guided_sample(*args, **kwargs):                 # keeps the final latent of the current run
        x0, history = sample(*args, **kwargs)
        final["x0"] = x0.detach().float().cpu()
        return x0, history

    def run(patches=(), **options):
        with ExitStack() as stack:
            for target, name, value in [*inversion_to_the_end(end), (pipeline, "guided_sample", guided_sample),
                                        *patches]:
                stack.enter_context(mock.patch.object(target, name, value))
            start = time.perf_counter()
            r = pipeline.transfer(clip.frames, prompt, output_dir=False, quiet=True, preset="reference",
                                  cache_dir=cache_dir, **{"seed": seed, **options})
        return {"x0": final["x0"], "frames": r.frames, "seconds": time.perf_counter() - start}

    base = run()
    print(f"draw: seed {seed}, prompt {prompt!r}; baseline {base['seconds']:.0f} s (with the inversion)", flush=True)
    rows = rows_of_a_draw(seed, betas, end)
    results = []
    for name in wanted:
        spec = rows[name]
        if "decode" in spec:
            start = time.perf_counter()
            r = {"x0": base["x0"], "frames": model.decode_latents(base["x0"], quantize=spec["decode"]),
                 "seconds": time.perf_counter() - start}
        else:
            r = run(spec.get("patches", ()), **spec.get("options", {}))
        changed = r["frames"] != base["frames"]
        results.append({"variant": name,
                        "latent_relative": float((r["x0"] - base["x0"]).norm() / base["x0"].norm()),
                        "pixels_mad_255": float(np.abs(r["frames"].astype(np.float64) - base["frames"]).mean()),
                        "pixels_changed": float(changed.mean()), "seconds": round(r["seconds"], 1)})
        print(f"  {name}: latent {results[-1]['latent_relative']:.3g}, pixels {results[-1]['pixels_mad_255']:.3g}"
              f"/255 ({r['seconds']:.0f} s)", flush=True)
    return {"seed": seed, "prompt": prompt, "baseline_seconds": round(base["seconds"], 1), "rows": results}


def summarise(draws: list[dict]) -> list[dict]:
    """Per row: the median and the range over the draws of each measure."""
    out = []
    for name in [r["variant"] for r in draws[0]["rows"]]:
        rows = [next(r for r in d["rows"] if r["variant"] == name) for d in draws]
        entry = {"variant": name, "draws": len(rows)}
        for key in ("latent_relative", "pixels_mad_255", "pixels_changed"):
            values = [r[key] for r in rows]
            entry[key] = {"median": statistics.median(values), "min": min(values), "max": max(values)}
        out.append(entry)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--draws", type=int, default=5, help="how many seeds (clip and run), from --first-seed (5)")
    parser.add_argument("--first-seed", type=int, default=0, help="(0)")
    parser.add_argument("--json", type=Path, help="also write every draw's rows and the summary here")
    parser.add_argument("--rows", nargs="+", metavar="TEXT",
                        help="only the rows whose name holds one of these (all: every row); default: the rows "
                             "marked * above")
    args = parser.parse_args()
    names = list(rows_of_a_draw(seed=0, betas=None, end=0))          # the names only: nothing runs
    if args.rows is None:
        wanted = list(DEFAULT_ROWS)
    else:
        wanted = [n for n in names if "all" in args.rows or any(text in n for text in args.rows)]
    if not wanted:
        parser.error(f"no row matches {args.rows}; rows: {', '.join(names)}")
    draws = []
    with tempfile.TemporaryDirectory(prefix="reference-gaps-") as cache_dir:
        for seed in range(args.first_seed, args.first_seed + args.draws):
            draws.append(measure_draw(seed, wanted, cache_dir))
            if args.json:                       # after every draw, so a long run that is stopped keeps its draws
                write_json(args.json, draws)
    summary = summarise(draws)
    print(f"\n{len(draws)} draws (seeds {args.first_seed}..{args.first_seed + args.draws - 1}): median (min .. max)")
    print("| variant | final latent, relative difference | frames, mean abs difference (1/255) | pixels changed |")
    print("|---|---|---|---|")
    for s in summary:
        cells = [f"{s[k]['median']:.3g} ({s[k]['min']:.3g} .. {s[k]['max']:.3g})"
                 for k in ("latent_relative", "pixels_mad_255", "pixels_changed")]
        print(f"| {s['variant']} | " + " | ".join(cells) + " |")


def write_json(path: Path, draws: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"draws": draws, "summary": summarise(draws), "torch": torch.__version__,
                                "threads": torch.get_num_threads()}, indent=2) + "\n")


if __name__ == "__main__":
    main()
