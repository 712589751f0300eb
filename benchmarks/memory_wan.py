"""GPU memory and predicted time of a Wan2.1-T2V-1.3B transfer at 81 frames of 480x832, counted without the
weights (see docs/memory.md).

Builds Wan2.1-T2V-1.3B's transformer, VAE and UMT5 text encoder on the meta device from their configs
(`motiontransfer.tools.wan`, `tools.meta.WAN_1_3B`: bf16, the VAE in fp32) and runs the package's own code paths
on them (`tools.memory.estimate_run`): one row per memory option, each with plain text-to-video's peak under the
same settings. Then the FLOPs of each pass kind there (`tools.passes.pass_flops`) weighted by the passes of the
default recipe and of plain sampling with the same steps (`tools.passes.run_counts`): the predicted time ratio.
Then a check of the counting against real CPU runs of a tiny Wan. Prints the tables and writes them, with the
per-phase numbers, the library versions and the wall time, as JSON and markdown. CPU only; about 5 minutes on
one thread.

    OMP_NUM_THREADS=1 python benchmarks/memory_wan.py --output-dir runs/memory
"""

from __future__ import annotations

import time

import torch

from memory_zeroscope import gib, markdown, option_records, output_dir, save   # beside this script
from motiontransfer.backbones.wan import METHOD_DEFAULTS
from motiontransfer.config import TransferConfig
from motiontransfer.pipeline import versions
from motiontransfer.sampling import guided_steps
from motiontransfer.tools.memory import CHECK_CASES, GIB, cpu_check, estimate_run, parameter_bytes
from motiontransfer.tools.meta import TINY_WAN, WAN_1_3B, meta_backbone
from motiontransfer.tools.passes import pass_flops, predicted_flops, predicted_seconds_ratio, run_counts

TARGET_PEAK = 24 * GIB             # issue 24: the default guided run with the text encoder offloaded
TARGET_OVER_PLAIN = 3 * GIB        # ... and within this of plain sampling's peak with the same offload settings
TARGET_TIME = 2.0                  # predicted time at most this times plain sampling's, same step count
CONFIG = TransferConfig().replace(**METHOD_DEFAULTS)          # the default recipe as it runs on a Wan model
KEPT = len(set(guided_steps(CONFIG.steps, CONFIG.guidance_window)) | {0})   # inverted latents kept (pipeline)
FASTVMT_LAYERS = ("blocks.14",)    # the block FastVMT reads on Wan2.1-1.3B

DEFAULT = dict(truncate=True, activations="checkpoint", attention="sdpa-fused", vae_slicing=False,
               cpu_offload=False, layers=None)
OPTIONS = [   # (row, changes to the default on CUDA: activations auto = checkpoint)
    ("no checkpointing (`--activations none`)", dict(activations="none")),
    ("**checkpointing per block (the default on CUDA)**", {}),
    ("activation offload to host (`--activations offload`)", dict(activations="offload")),
    ("checkpointing + VAE tiling (`--vae-slicing`)", dict(vae_slicing=True)),
    ("checkpointing + `--cpu-offload` (text encoder, VAE)", dict(cpu_offload=True)),
    ("**checkpointing + VAE tiling + `--cpu-offload`**", dict(vae_slicing=True, cpu_offload=True)),
    ("no checkpointing + VAE tiling + `--cpu-offload`", dict(activations="none", vae_slicing=True, cpu_offload=True)),
    ("... without truncation (full forward)", dict(truncate=False, vae_slicing=True, cpu_offload=True)),
    ("... hooking block 14 (FastVMT's)", dict(layers=FASTVMT_LAYERS, vae_slicing=True, cpu_offload=True)),
    ("... attention on SDPA's math backend", dict(attention="sdpa-math", vae_slicing=True, cpu_offload=True)),
]
COLUMNS = ("graph at backward", "guidance step", "CFG pass", "VAE decode", "text encode", "run peak", "peak phase",
           "plain t2v peak", "run - plain")

def row(options: dict) -> dict:
    run = estimate_run(model=WAN_1_3B, kept_latents=KEPT, **options)
    plain = estimate_run(model=WAN_1_3B, plain=True, **options)
    p = run["phases"]
    over = run["peak"] - plain["peak"]
    return {"options": options, "peak": run["peak"], "peak_phase": run["peak_phase"], "phases": p,
            "plain_peak": plain["peak"], "plain_peak_phase": plain["peak_phase"], "plain_phases": plain["phases"],
            "cells": [gib(p["guidance"]["held"]), gib(p["guidance"]["total"]), gib(p["sampling"]["total"]),
                      gib(p["decode"]["total"]), gib(p["text"]["total"]), gib(run["peak"]), run["peak_phase"],
                      f"{gib(plain['peak'])} ({plain['peak_phase']})", f"{over / GIB:+.2f}"]}


def timing() -> dict:
    """FLOPs per pass kind, the pass counts of the default recipe and of plain sampling, the predicted ratios."""
    schedule = meta_backbone(WAN_1_3B).schedule(CONFIG.steps)
    counts = {"default": run_counts(CONFIG, schedule), "inversion cached": run_counts(CONFIG, schedule, cached=True),
              "plain t2v": run_counts(CONFIG, schedule, plain=True)}
    flops = {"checkpoint": pass_flops(model=WAN_1_3B, activations="checkpoint"),
             "none": pass_flops(model=WAN_1_3B, activations="none"),
             "checkpoint, block 14": pass_flops(model=WAN_1_3B, activations="checkpoint", layers=FASTVMT_LAYERS)}
    ratios = {f"{run}, {mode}": predicted_seconds_ratio(counts[run], counts["plain t2v"], flops[mode])
              for run in ("default", "inversion cached") for mode in flops}
    return {"counts": counts, "flops": flops, "ratios": ratios,
            "tflops": {f"{run}, {mode}": predicted_flops(counts[run], flops[mode]) / 1e12
                       for run in counts for mode in flops}}


def validation() -> list[list[str]]:
    rows = []
    for frames, size in ((9, 32), (17, 64)):
        for attention in ("sdpa-fused", "sdpa-math"):
            for case in CHECK_CASES:
                r = cpu_check(TINY_WAN, frames, size, size, case, attention=attention)
                saved = "-" if r["saved_cpu"] is None else f"{r['saved_cpu']:,} / {r['saved_meta']:,}"
                rows.append([f"{frames}x{size}x{size}", attention, case, saved,
                             f"{r['peak_cpu_ops']:,} / {r['peak_meta']:,}", f"{r['peak_cpu']:,}",
                             f"{r['peak_cpu'] / r['peak_meta'] - 1:+.1%}"])
    return rows


def verdict(default: dict, t: dict) -> str:
    peak, over = default["peak"], default["peak"] - default["plain_peak"]
    ratio = t["ratios"]["default, checkpoint"]
    say = lambda ok: "holds" if ok else "misses"   # noqa: E731
    return (f"Targets (default recipe, checkpointing, `--cpu-offload`, VAE tiling): run peak {gib(peak)} GiB "
            f"(<= 24: {say(peak <= TARGET_PEAK)}); over plain t2v's {gib(default['plain_peak'])} GiB by "
            f"{over / GIB:+.2f} (<= 3: {say(over <= TARGET_OVER_PLAIN)}); predicted time {ratio:.2f}x plain t2v "
            f"(<= 2: {say(ratio <= TARGET_TIME)}).\n")


def main(argv: list[str] | None = None) -> int:
    output = output_dir(__doc__, argv)
    start = time.perf_counter()

    options = [(name, dict(DEFAULT, **changes), row(dict(DEFAULT, **changes))) for name, changes in OPTIONS]
    t = timing()
    checks = validation()
    seconds = time.perf_counter() - start

    frames, height, width = WAN_1_3B.size
    unit = f"GiB, bf16 (VAE fp32), {frames} x {height}x{width}"
    text = markdown(f"Wan2.1-T2V-1.3B, options ({unit}; device memory while each phase runs, weights included)",
                    ["option", *COLUMNS], [[name, *r["cells"]] for name, _, r in options])
    m = meta_backbone(WAN_1_3B)
    text += (f"\nWeights: transformer {gib(parameter_bytes(m.transformer))} GiB (bf16, its fp32 modules kept), text "
             f"encoder {gib(parameter_bytes(m.text_encoder))} (bf16), VAE {gib(parameter_bytes(m.vae))} (fp32); "
             f"{KEPT} inverted latents kept.\n")
    mode_rows = [[mode, *(f"{f[k] / 1e12:.1f}" for k in ("unet_forward", "unet_truncated_forward", "unet_backward",
                                                          "recompute"))] for mode, f in t["flops"].items()]
    text += "\n" + markdown("TFLOPs per pass (81 x 480x832, counted on the meta device)",
                            ["activations, hooked block", "full forward (batch 1)", "truncated forward",
                             "backward", "of which recompute"], mode_rows)
    text += "\n" + markdown(f"Passes of a run ({CONFIG.steps} steps, CFG {CONFIG.guidance_scale:g}, guidance window "
                            f"{CONFIG.guidance_window}, reuse_every {CONFIG.reuse_every}, {CONFIG.iterations} "
                            f"iterations)", ["run", "full (batch elements)", "truncated", "backward"],
                            [[k, *(str(v[kind]) for kind in ("unet_forward", "unet_truncated_forward",
                                                             "unet_backward"))] for k, v in t["counts"].items()])
    text += "\n" + markdown("Predicted time over plain t2v with the same steps (FLOP-weighted passes)",
                            ["run, activations", "ratio"], [[k, f"{v:.2f}x"] for k, v in t["ratios"].items()])
    text += "\n" + markdown("Check on CPU: tiny Wan (fp32), real run / meta count, bytes",
                            ["latent frames x H x W (pixels)", "attention", "case", "saved for backward",
                             "peak of the ops' storages", "CPU allocator peak", "allocator vs meta"], checks)
    text += "\n" + verdict(options[5][2], t)
    text += f"Counted on the meta device in {seconds:.0f} s (torch {torch.__version__}).\n"
    print(text)

    record = {"options": option_records(options), "timing": t, "cpu_check": checks, "kept_latents": KEPT, "seconds": seconds,
              "recipe": CONFIG.to_dict(), "shape": {"frames": frames, "height": height, "width": width,
                                                    "dtype": "bf16", "vae_dtype": "fp32"},
              "versions": versions()}
    save(output, "memory_wan", record, text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
