"""GPU memory of a ZeroScope-scale transfer, counted without the weights (see docs/memory.md).

Builds ZeroScope's UNet3D, VAE and text encoder on the meta device from their configs and runs the package's
own code paths on them (`motiontransfer.tools.memory.estimate_run`): one row per memory option at 24 frames, 576x320,
fp16, then a frame sweep. Prints the tables and writes them, with the per-phase numbers, the options, the
library versions and the wall time, as JSON and markdown. CPU only; about 75 s on one thread.

    OMP_NUM_THREADS=1 python benchmarks/memory_zeroscope.py --output-dir runs/memory
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import time
from pathlib import Path

import torch
from diffusers import UNet3DConditionModel
from torch.nn.attention import SDPBackend, sdpa_kernel

from motiontransfer import __version__
from motiontransfer.config import DEFAULT_LAYERS
from motiontransfer.features import FeatureHooks
from motiontransfer.losses import motion_loss
from motiontransfer.activations import checkpoint_blocks
from motiontransfer.backbones.unet3d import unet_checkpoint_units
from motiontransfer.sampling import GuidedStep, optimise_latent
from motiontransfer.tools.memory import (GIB, LiveBytes, SavedTensorCounter, cpu_allocator_peak, estimate_run,
                                         fused_attention, meta_model)

CARD = 16 * GIB            # a "16 GB" card has 16 GiB
HEADROOM = 1 * GIB         # outside these counts: CUDA context, cuDNN/cuBLAS workspaces, allocator slack
BUDGET = CARD - HEADROOM
DEFAULT = dict(truncate=True, activations="none", attention="sdpa-fused", units="layers", vae_slicing=False,
               cpu_offload=False)
RECOMMENDED = dict(DEFAULT, activations="checkpoint", vae_slicing=True)
OPTIONS = [   # (row, changes to the default recipe)
    ("default recipe", {}),
    ("truncation off (full forward)", dict(truncate=False)),
    ("checkpointing, per layer", dict(activations="checkpoint", units="layers")),
    ("checkpointing, per block", dict(activations="checkpoint", units="blocks")),
    ("activation offload to host", dict(activations="offload")),
    ("attention: SDPA math backend", dict(attention="sdpa-math")),
    ("attention: plain AttnProcessor", dict(attention="plain")),
    ("VAE slicing", dict(vae_slicing=True)),
    ("model CPU offload (text encoder, VAE)", dict(cpu_offload=True)),
    ("checkpointing + VAE slicing", dict(activations="checkpoint", vae_slicing=True)),
    ("checkpointing + VAE slicing + CPU offload", dict(activations="checkpoint", vae_slicing=True, cpu_offload=True)),
]
SWEEP = (8, 16, 24, 32)
COLUMNS = ("graph at backward", "guidance step", "CFG pass", "VAE decode", "run peak", "peak phase",
           "fits 16 GiB card", "to host per iteration")


def gib(n: int | None) -> str:
    return "-" if n is None else f"{n / GIB:.2f}"


def row(options: dict, frames: int) -> dict:
    run = estimate_run(frames=frames, **options)
    p = run["phases"]
    return {"frames": frames, "options": options, "peak": run["peak"], "peak_phase": run["peak_phase"],
            "fits": run["peak"] <= BUDGET, "phases": p,
            "cells": [gib(p["guidance"]["held"]), gib(p["guidance"]["total"]), gib(p["sampling"]["total"]),
                      gib(p["decode"]["total"]), gib(run["peak"]), run["peak_phase"],
                      "yes" if run["peak"] <= BUDGET else "no",
                      gib(p["guidance"]["host"]) if p["guidance"]["host"] else "-"]}


def saved_by_block(frames: int = 24) -> dict[str, int]:
    """Where the default guidance step's saved activations come from: bytes by top-level UNet block."""
    model = meta_model(vae_config=None, text_config=None)
    unet = model.unet
    outside = "outside the blocks (conv_in, transformer_in, loss)"
    current = [outside]
    handles = []
    for name in unet_checkpoint_units(unet, "blocks"):
        module = unet.get_submodule(name)
        handles.append(module.register_forward_pre_hook(lambda m, a, name=name: current.__setitem__(0, name)))
        handles.append(module.register_forward_hook(lambda *a: current.__setitem__(0, outside), always_call=True))
    x = torch.empty(1, 4, frames, 40, 72, device="meta")
    cond = torch.empty(1, 77, 1024, device="meta", dtype=model.dtype)
    src = {n: torch.empty(1, frames, 1280, device="meta") for n in DEFAULT_LAYERS}
    counter = SavedTensorCounter(exclude=unet.parameters(), label=lambda: current[0])
    try:
        with FeatureHooks(unet, DEFAULT_LAYERS) as hooks, fused_attention(), LiveBytes("meta"):
            def loss_fn(latent):
                with counter:
                    return motion_loss("pairwise_cosine", src, model.features(hooks, latent, 981, cond))
            optimise_latent(x, loss_fn, 1, 1e-3, GuidedStep(t=981, lr=1e-3))
    finally:
        for h in handles:
            h.remove()
    return counter.by_label


# The tiny UNet3D of tests/conftest.py (ZeroScope's block types), for checking the counts against real CPU runs.
TINY_UNET = dict(sample_size=8, block_out_channels=(8, 16, 16), layers_per_block=1,
                 down_block_types=("CrossAttnDownBlock3D", "CrossAttnDownBlock3D", "DownBlock3D"),
                 up_block_types=("UpBlock3D", "CrossAttnUpBlock3D", "CrossAttnUpBlock3D"),
                 norm_num_groups=4, cross_attention_dim=16, attention_head_dim=4)
CASES = ("guided step", "guided step, full forward", "guided step, checkpointed", "forward without grad")


def tiny_case(device: str, attention: str, case: str, frames: int, size: int) -> tuple[int | None, int]:
    """(bytes saved for backward, peak bytes) of one case on the tiny UNet, counted on meta or measured on CPU."""
    with torch.device(device):
        torch.manual_seed(0)
        unet = UNet3DConditionModel(**TINY_UNET).eval().requires_grad_(False)
        x, cond = torch.randn(1, 4, frames, size, size), torch.randn(1, 8, 16)
        src = {n: torch.randn(1, frames, 16) for n in DEFAULT_LAYERS}
    fused = attention == "sdpa-fused"
    if device == "meta":
        kernel = fused_attention() if fused else contextlib.nullcontext()
    else:
        kernel = sdpa_kernel([SDPBackend.FLASH_ATTENTION if fused else SDPBackend.MATH])
    counter = SavedTensorCounter(exclude=unet.parameters()) if case != "guided step, checkpointed" else None

    def run():
        if case == "forward without grad":
            with torch.no_grad():
                unet(x, 501, encoder_hidden_states=cond)
            return
        option = contextlib.nullcontext()
        if case == "guided step, checkpointed":
            recompute = fused_attention if fused and device == "meta" else contextlib.nullcontext
            option = checkpoint_blocks(unet, unet_checkpoint_units(unet), recompute_context=recompute)
        latent = x.clone().requires_grad_(True)
        with FeatureHooks(unet, DEFAULT_LAYERS, stop_early=case != "guided step, full forward") as hooks, option:
            with counter or contextlib.nullcontext():
                feats = {n: f.unflatten(0, (-1, frames)).float()
                         for n, f in hooks.run(unet, latent, 501, encoder_hidden_states=cond).items()}
                loss = motion_loss("pairwise_cosine", src, feats)
            del feats
            loss.backward()

    with kernel:
        if device == "meta":
            tracker = LiveBytes("meta")
            with tracker:
                run()
            peak = tracker.peak
        else:
            peak = cpu_allocator_peak(run)
    return (counter.bytes if counter is not None and case != "forward without grad" else None), peak


def validation() -> list[list[str]]:
    rows = []
    for frames, size in ((4, 16), (8, 32)):
        for attention in ("sdpa-math", "sdpa-fused"):
            for case in CASES:
                (real_saved, real_peak), (meta_saved, meta_peak) = (
                    tiny_case(d, attention, case, frames, size) for d in ("cpu", "meta"))
                saved = "-" if real_saved is None else f"{real_saved:,} / {meta_saved:,}"
                rows.append([f"{frames}x{size}x{size}", attention, case, saved, f"{real_peak:,} / {meta_peak:,}",
                             f"{real_peak / meta_peak - 1:+.1%}"])
    return rows


def markdown(title: str, header: list[str], rows: list[list[str]]) -> str:
    lines = [f"**{title}**", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def output_dir(doc: str, argv: list[str] | None) -> Path:
    """The `--output-dir` of a memory benchmark's command line (default runs/memory); the counting then runs on
    one thread."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output-dir", type=Path, default=Path("runs/memory"), help="where to write (runs/memory)")
    torch.set_num_threads(1)
    return parser.parse_args(argv).output_dir


def option_records(options: list[tuple[str, dict, dict]]) -> list[dict]:
    """The rows of an options table as the JSON record keeps them: name, options and numbers, not the cells."""
    return [{"name": n, "options": o, **{k: v for k, v in r.items() if k != "cells"}} for n, o, r in options]


def save(directory: Path, name: str, record: dict, text: str) -> None:
    """The record as `name`.json and the tables as `name`.md in `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / f"{name}.json").write_text(json.dumps(record, indent=1, default=str))
    (directory / f"{name}.md").write_text(text)


def main(argv: list[str] | None = None) -> int:
    output = output_dir(__doc__, argv)
    start = time.perf_counter()

    options = [(name, dict(DEFAULT, **changes), row(dict(DEFAULT, **changes), 24)) for name, changes in OPTIONS]
    sweeps = {label: [row(recipe, f) for f in SWEEP] for label, recipe in
              (("default recipe", DEFAULT), ("checkpointing + VAE slicing", RECOMMENDED))}
    blocks = saved_by_block()
    checks = validation()
    seconds = time.perf_counter() - start

    unit = "GiB, fp16, 576x320"
    text = markdown(f"Options at 24 frames ({unit}; device memory while each phase runs, weights included)",
                    ["option", *COLUMNS], [[name, *r["cells"]] for name, _, r in options])
    for label, rows in sweeps.items():
        text += "\n" + markdown(f"Frame sweep, {label} ({unit})", ["frames", *COLUMNS],
                                [[str(r["frames"]), *r["cells"]] for r in rows])
    total = sum(blocks.values())
    text += "\n" + markdown("Saved for backward by the default guidance step, by UNet block (24 frames, GiB)",
                            ["block", "saved", "share"],
                            [[k, gib(v), f"{v / total:.0%}"] for k, v in blocks.items()] +
                            [["total", gib(total), "100%"]])
    text += "\n" + markdown("Check on CPU: tiny UNet3D (fp32), real run / meta count, bytes",
                             ["latent FxHxW", "attention", "case", "saved for backward", "peak", "real vs meta"],
                             checks)
    weights = options[0][2]["phases"]["text"]["weights"]
    text += (f"\nWeights (fp16): all components {gib(weights)} GiB. Counted on the meta device in {seconds:.0f} s "
             f"(torch {torch.__version__}).\n")
    print(text)

    import diffusers
    import transformers
    record = {"options": option_records(options),
              "sweeps": {k: [{kk: vv for kk, vv in r.items() if kk != "cells"} for r in v] for k, v in sweeps.items()},
              "saved_by_block": blocks, "cpu_check": checks, "budget_bytes": BUDGET, "seconds": seconds,
              "shape": {"frames": 24, "height": 320, "width": 576, "dtype": "fp16"},
              "versions": {"motiontransfer": __version__, "torch": torch.__version__,
                           "diffusers": diffusers.__version__, "transformers": transformers.__version__,
                           "python": platform.python_version()}}
    save(output, "memory_zeroscope", record, text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
