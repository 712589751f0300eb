"""motiontransfer: zero-shot text-driven video motion transfer (CVPR 2024, space-time diffusion features).

Each subcommand calls one public function of the library:

    transfer          pipeline.transfer_many            invert            pipeline.invert
    analyze           pipeline.analyze                  env               pipeline.environment
    score             evaluation.metrics.score_files    bench             evaluation.suite.bench_suite
    bench-speed       evaluation.speed.bench_speed      demo              shapes.demo.demo
    cache             inversion.manage_cache            calibrate         evaluation.calibration.calibrate
    report            shapes.report.evaluate_model      train             shapes.trainer.train
    train-classifier  shapes.classifier.train_classifier
    ui                ui.serve (a Gradio web page)      batch             batch.run_batch (locally or on Ray)

Errors a user can act on print one line on stderr and exit with status 2 (1 for out-of-memory); `--debug`
shows the traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from pathlib import Path

# Light imports only: `--help` and argument errors must not load torch. The library is imported inside the
# commands.
from . import config as cfg
from .errors import MotionTransferError


# ------------------------------------------------------------------------------------------------ value types

def _four(convert, message: str):
    """An argparse type: "a,b,c,d" -> four values through `convert`; `message` (with {text}) otherwise."""
    def parse(text: str) -> tuple:
        try:
            values = tuple(convert(v) for v in text.split(","))
        except ValueError:
            values = ()
        if len(values) != 4:
            raise argparse.ArgumentTypeError(message.format(text=text[:40]))
        return values
    return parse


_box = _four(float, "--box takes x0,y0,x1,y1 in pixels of the original video")
_region = _four(int, "expected X,Y,WIDTH,HEIGHT in whole pixels, got {text!r}")


def parse_key_value(text: str) -> tuple[str, object]:
    """"key=value" -> (key, YAML value); also used by benchmarks/init_sweep.py."""
    import yaml

    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key, yaml.safe_load(value)


def _key_text(text: str) -> tuple[str, str]:
    """"key=value" -> (key, value as text), for `train --set` (the training config parses the value)."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key, value


# ------------------------------------------------------------------------------------------ transfer options

def _add_method_options(p: argparse.ArgumentParser) -> None:
    """Options of TransferConfig; every default is None so that only given flags override the config file.
    Choices come from config.py, which validates the same lists."""
    g = p.add_argument_group("model and input")
    g.add_argument("--model", help="diffusers-format folder or hub id (default: the shipped shapes model)")
    g.add_argument("--config", type=Path, help="YAML file setting any option; flags override it")
    g.add_argument("--preset", choices=list(cfg.PRESETS),
                   help="default (ours), previous (our earlier default, kept) or reference (the paper's code)")
    g.add_argument("--frames", type=int, help="frames to use (default: the model's native count)")
    g.add_argument("--stride", type=int, help="take every S-th frame (output fps = source fps / S)")
    g.add_argument("--start", type=int, help="first frame, 0-based")
    g.add_argument("--region", type=_region, metavar="X,Y,W,H",
                   help="use only this box of the source frames (pixels), then fit it to the model")
    g.add_argument("--resize", choices=cfg.RESIZE_POLICIES, help="how to fit the model's aspect (crop)")
    g.add_argument("--width", type=int, help="pixels (default: the model's)")
    g.add_argument("--height", type=int, help="pixels (default: the model's)")
    g.add_argument("--fps", type=float, help="frame rate of an image folder (default: 8)")
    g = p.add_argument_group("method")
    g.add_argument("--source-prompt", help="describes the source video (default: empty)")
    g.add_argument("--negative-prompt", help="negative prompt for classifier-free guidance")
    g.add_argument("--guidance-scale", type=float, help="classifier-free guidance scale (10; Wan models: 5)")
    g.add_argument("--steps", type=int, help="sampling steps (25)")
    g.add_argument("--inversion-steps", type=int, help="inversion steps (default: = --steps; reference 999)")
    g.add_argument("--inversion-solver", choices=cfg.INVERSION_SOLVERS,
                   help="flow models' inversion: euler (one pass a step, the default) or midpoint (two)")
    g.add_argument("--restart", action=argparse.BooleanOptionalAction, default=None,
                   help="re-noise and denoise again after each step (reference; off)")
    g.add_argument("--guidance-window", type=float, nargs=2, metavar=("START", "END"),
                   help="guided part of the schedule, as fractions (0 0.4)")
    g.add_argument("--iterations", type=int, help="Adam steps per guided timestep (10)")
    g.add_argument("--early-stop", type=float, metavar="FRACTION",
                   help="end a step's iterations once the loss falls by less than this fraction (0: off)")
    g.add_argument("--reuse-every", type=int, metavar="K",
                   help="optimise every K-th guided step only; the others reuse the last change (3; 1: off)")
    g.add_argument("--learning-rate", type=float, nargs=2, metavar=("FIRST", "LAST"), help="(0.007 0.004)")
    g.add_argument("--layers", nargs="+", help="denoiser module names to hook (default: the model family's: the reference's up_blocks.1 layers on UNet3D, the middle block on Wan)")
    g.add_argument("--layer-weights", type=float, nargs="+", help="one weight per layer")
    g.add_argument("--loss", choices=cfg.LOSSES)
    g.add_argument("--init", choices=cfg.INITS, help="initial latent (lf, Eq. 4)")
    g.add_argument("--sdedit-strength", type=float, help="with --init sdedit: noise level as a fraction of T (0.6)")
    g.add_argument("--lf-factor", type=int, help="down-sampling factor of the LF filter (4)")
    g.add_argument("--lf-filter", choices=cfg.LF_FILTERS,
                   help="LF up-sampling: lowpass (ours) or reference (antialiased, shifted; --preset reference)")
    g.add_argument("--vae-encode", choices=cfg.VAE_ENCODINGS,
                   help="source latent: the VAE posterior's mean (ours) or a sample from the seed (reference)")
    g.add_argument("--quantize", choices=cfg.QUANTIZATIONS,
                   help="decoded pixels to 8 bits: round (ours) or truncate (reference; --preset reference)")
    g.add_argument("--seed", type=int, help="random seed (default: drawn and recorded in run.json)")
    g = p.add_argument_group("runtime")
    g.add_argument("--device", help="auto, cpu, cuda, cuda:N, mps")
    g.add_argument("--dtype", choices=cfg.DTYPES)
    g.add_argument("--allow-unsafe-weights", action="store_true", default=None,
                   help="allow pickled .bin weights (they can run code)")
    g.add_argument("--cache-dir", help="inversion cache (default: ~/.cache/motiontransfer/inversions; "
                                       "`motiontransfer cache` lists and clears it)")
    g.add_argument("--no-cache", dest="use_cache", action="store_false", default=None, help="don't use the cache")
    g.add_argument("--vae-slicing", action="store_true", default=None, help="VAE one frame at a time")
    g.add_argument("--activations", choices=cfg.ACTIVATIONS,
                   help="what guidance keeps for backward (auto: checkpoint on CUDA, to save GPU memory)")
    g.add_argument("--cpu-offload", action="store_true", default=None,
                   help="keep the text encoder and VAE on the CPU except while they run (GPU memory)")


def _add_limit_options(p: argparse.ArgumentParser) -> None:
    """`config.InputLimits`: checked from the input's header before anything is decoded."""
    g = p.add_argument_group("input limits (checked before decoding)")
    defaults = cfg.InputLimits()
    g.add_argument("--max-frames", type=int, help=f"frames read from a video ({defaults.max_frames})")
    g.add_argument("--max-frame-pixels", type=int,
                   help=f"width x height of one frame ({defaults.max_frame_pixels:,})")
    g.add_argument("--max-total-pixels", type=int,
                   help=f"frames read x pixels per frame ({defaults.max_total_pixels:,})")
    g.add_argument("--max-file-mb", type=float, help=f"input file size in MB ({defaults.max_file_mb:g})")


def _limits(args) -> "cfg.InputLimits | None":
    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(cfg.InputLimits)
             if getattr(args, f.name, None) is not None}
    return cfg.InputLimits(**given) if given else None


def _add_output_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--output-dir", type=Path, help="where to write (default: outputs/<video>-<prompt>)")
    p.add_argument("--overwrite", action="store_true", default=None, help="replace an earlier result there")


def _method_options(args) -> dict:
    """The TransferConfig fields given on the command line (every field of the config is a flag)."""
    return {f.name: getattr(args, f.name) for f in dataclasses.fields(cfg.TransferConfig)
            if getattr(args, f.name, None) is not None}


def _run_options(args) -> dict:
    out = {"quiet": args.quiet, "preset": args.preset, "config": args.config, "fps": args.fps,
           "limits": _limits(args)}
    if getattr(args, "output_dir", None) is not None:
        out["output_dir"] = args.output_dir
    if getattr(args, "overwrite", None):
        out["overwrite"] = True
    return out


# --------------------------------------------------------------------------------------------------- commands

def _print_self_check(check: dict) -> None:
    from .evaluation.selfcheck import describe

    for line in describe(check):
        print(line, file=sys.stderr if line.startswith("warning") else sys.stdout)


def cmd_transfer(args) -> int:
    from .video import check_input

    check_input(args.video)                   # a missing or broken input says so before the libraries load
    if not args.debug:
        _quiet_libraries()
    from .evaluation.selfcheck import check_result
    from .pipeline import transfer_many

    for r in transfer_many(args.video, args.prompt, **_run_options(args), **_method_options(args)):
        print(f"{r.output_dir}/result.mp4  (seed {r.seed}, {sum(r.timings.values()):.1f} s)")
        _print_self_check(check_result(r))
    return 0


def cmd_invert(args) -> int:
    from .video import check_input

    check_input(args.video)                   # a missing or broken input says so before the libraries load
    if not args.debug:
        _quiet_libraries()
    from .pipeline import invert

    opts = _run_options(args)
    done = invert(args.video, quiet=opts["quiet"], preset=opts["preset"], config=opts["config"], fps=opts["fps"],
                  limits=opts["limits"], **_method_options(args))
    print(("cache hit: " if done.cached else "inverted: ") + str(done.cache))
    return 0


def cmd_analyze(args) -> int:
    from .video import check_input

    check_input(args.video)                   # a missing or broken input says so before the libraries load
    if not args.debug:
        _quiet_libraries()
    from .pipeline import analyze

    for r in analyze(args.video, target=args.target, seeds=args.seeds, **_run_options(args), **_method_options(args)):
        print(f"{r.output_dir}/result.mp4  (seed {r.seed})")
    return 0


def cmd_score(args) -> int:
    from .evaluation.metrics import score_files

    given = {k: v for k, v in (("tracker", args.tracker), ("grid", args.grid)) if v is not None}
    result = score_files(args.original, args.edited, mask=args.mask, box=args.box,
                         cotracker_checkpoint=args.cotracker_checkpoint, output=args.output, limits=_limits(args),
                         **given)
    print(json.dumps(result, indent=2))
    return 0


def cmd_calibrate(args) -> int:
    from .evaluation.calibration import calibrate, markdown

    report = calibrate(clips=args.clips, sizes=tuple(args.sizes), real=not args.no_real, validation=args.validation,
                       suite_results=args.suite_results, suite=args.suite, progress=not args.quiet)
    print(markdown(report), end="")
    if args.json:
        from .video import atomic_write_text

        atomic_write_text(args.json, json.dumps(report, indent=2) + "\n")
        print(f"\nwrote {args.json}")
    return 0


def cmd_bench(args) -> int:
    from .evaluation.suite import bench_suite, markdown_table

    summary = bench_suite(args.suite, args.output_dir, methods=args.methods, limit=args.limit, quiet=args.quiet,
                          options=dict(args.option or []), model=args.model, ray_address=args.ray)
    print(markdown_table(summary["rows"], summary["text_fidelity"]))
    return 0


def cmd_bench_speed(args) -> int:
    from .evaluation.speed import bench_speed, perf_table

    print(perf_table(bench_speed(args.output_dir, seeds=args.seeds, model=args.model, rows=tuple(args.rows),
                                 quiet=args.quiet)))
    return 0


def cmd_demo(args) -> int:
    from .shapes.demo import demo

    options = {k: v for k, v in (("model", args.model), ("reuse_every", args.reuse_every)) if v is not None}
    done = demo(video=args.video, prompt=args.prompt, output_dir=args.output_dir, overwrite=bool(args.overwrite),
                seed=args.seed, quiet=args.quiet, limits=_limits(args), **options)
    print(f"wrote {done.output_dir}")
    print(f"object path: velocity cosine {done.trajectory['velocity_cosine']:.2f}, "
          f"centre error {done.trajectory['centre_error']:.1f} px")
    _print_self_check(done.self_check)
    return 0


def cmd_cache(args) -> int:
    from .inversion import manage_cache

    done = manage_cache(args.cache_dir, clear=args.clear, older_than_days=args.older_than,
                        larger_than_mb=args.larger_than)
    for e in done["entries"]:
        print(f"{e['mb']:10.3f} MB  {e['age_days']:8.2f} days  {e['name']}{'  (temporary)' if e['temporary'] else ''}")
    print(f"{len(done['entries'])} entries, {done['total_mb']:.3f} MB in {done['directory']}")
    if args.clear:
        print(f"removed {len(done['removed'])} entries, {done['removed_mb']:.3f} MB")
    return 0


def cmd_env(args) -> int:
    from .pipeline import environment

    print(json.dumps(environment(), indent=2))
    return 0


def cmd_report(args) -> int:
    from .shapes.report import evaluate_model, format_report

    report = evaluate_model(args.model, n_prompts=args.n, seed=args.seed, steps=args.steps, out=args.json,
                            transfer_steps=args.transfer_steps, pairs=args.pairs, real_clips=args.real_clips,
                            vae_clips=args.vae_clips, progress=not args.quiet)
    print(format_report(report))
    if args.json:
        print(f"\nwrote {args.json}")
    return 0


def cmd_train_classifier(args) -> int:
    from .shapes.classifier import train_classifier

    record = train_classifier(args.out, seed=args.seed, steps=args.steps, progress=not args.quiet)
    print(json.dumps({"out": str(args.out or "the shipped weights"), "parameters": record["parameters"],
                      "seconds": record["training"]["seconds"], "held_out": record["held_out"]}, indent=2))
    return 0


def cmd_train(args) -> int:
    from .shapes.trainer import train

    overrides = dict(args.set) | ({"family": args.family} if args.family else {})
    train(args.work, export_to=args.export, export_only=args.export_only, init_from=args.init_from,
          overrides=overrides, device=args.device)
    return 0


def cmd_ui(args) -> int:
    from .ui import serve

    options = {"cache_dir": args.cache_dir} if args.cache_dir else {}
    if args.device:
        options["device"] = args.device
    print(f"serving on http://{args.host}:{args.port} (Ctrl-C stops it)", flush=True)
    serve(args.model, host=args.host, port=args.port, output_dir=args.output_dir, options=options)
    return 0


def cmd_batch(args) -> int:
    from .batch import run_batch

    options = _method_options(args)
    options.update({k: v for k, v in (("preset", args.preset), ("config", args.config), ("fps", args.fps))
                    if v is not None})
    records = run_batch(args.jobs, args.output_dir, options=options, quiet=args.quiet, ray_address=args.ray,
                        num_gpus=args.gpus_per_job)
    counts = {s: sum(r["status"] == s for r in records) for s in ("done", "skipped", "failed")}
    print(f"{counts['done']} done, {counts['skipped']} skipped (done before), {counts['failed']} failed; "
          f"summary: {args.output_dir / 'summary.md'}")
    return 1 if counts["failed"] else 0


# ----------------------------------------------------------------------------------------------------- parser

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="motiontransfer", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--quiet", action="store_true", help="no progress bars")
    common.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("transfer", parents=[common], help="re-render a video's motion as a prompt describes")
    p.add_argument("video", help="video file (.mp4 .mov .avi .webm .gif) or a folder of numbered images")
    p.add_argument("--prompt", action="append", required=True, help="target prompt; repeat for several")
    _add_method_options(p)
    _add_limit_options(p)
    _add_output_options(p)
    p.set_defaults(func=cmd_transfer, checks_input=True)

    p = sub.add_parser("invert", parents=[common], help="DDIM-invert a video into the cache only")
    p.add_argument("video")
    _add_method_options(p)
    _add_limit_options(p)
    p.set_defaults(func=cmd_invert, checks_input=True)

    p = sub.add_parser("analyze", parents=[common], help="feature inversion (paper Eq. 1), one video per seed")
    p.add_argument("video")
    p.add_argument("--target", choices=["features", "smm"], default="smm", help="what to match (smm)")
    p.add_argument("--seeds", type=int, default=3, help="how many seeds, 0..N-1 (3)")
    _add_method_options(p)
    _add_limit_options(p)
    _add_output_options(p)
    p.set_defaults(func=cmd_analyze, checks_input=True)

    p = sub.add_parser("score", parents=[common], help="motion fidelity of an edited video against its source")
    p.add_argument("original", type=Path)
    p.add_argument("edited", type=Path)
    p.add_argument("--mask", type=Path, help="first-frame mask image of the original (white = object)")
    p.add_argument("--box", type=_box, help="first-frame box x0,y0,x1,y1 in the original's pixels")
    p.add_argument("--tracker", choices=["flow", "lk", "cotracker"],
                   help="flow (dense optical flow, the default every front end uses), lk (Lucas-Kanade: needs "
                        "texture), cotracker (the paper's, with --cotracker-checkpoint)")
    p.add_argument("--grid", type=int, help="query grid side (default 55, as the reference)")
    p.add_argument("--cotracker-checkpoint", type=Path)
    p.add_argument("--output", type=Path, help="also write the JSON here")
    _add_limit_options(p)
    p.set_defaults(func=cmd_score)

    p = sub.add_parser("calibrate", parents=[common],
                       help="the motion-fidelity score against known motion: world and real clips, a bench's results")
    p.add_argument("--clips", type=int, default=50, help="world clips per size (50)")
    p.add_argument("--sizes", type=int, nargs="+", default=[32, 128], help="short sides in px (32 128)")
    p.add_argument("--no-real", action="store_true", help="world clips only (no vtest.avi, bikes.mp4)")
    p.add_argument("--validation", action="store_true",
                   help="the clips the tracker's settings were chosen on, instead of the reported ones")
    p.add_argument("--suite-results", type=Path, metavar="BENCH_DIR",
                   help="also re-score this `motiontransfer bench` output against the velocity cosine")
    p.add_argument("--suite", default="shapes", help="the suite that bench ran (shapes)")
    p.add_argument("--json", type=Path, help="write the full report here")
    p.set_defaults(func=cmd_calibrate)

    p = sub.add_parser("bench", parents=[common], help="run a suite of cases through several methods")
    p.add_argument("--suite", default="shapes", help="shapes (shipped) or a suite YAML file")
    p.add_argument("--limit", type=int, help="first N cases only")
    p.add_argument("--model", help="model folder or hub id for every case, over the suite's (world cases are "
                                   "rendered at its size)")
    p.add_argument("--option", type=parse_key_value, action="append", metavar="KEY=VALUE",
                   help="a transfer option for every method, over the suite's (YAML value; repeatable)")
    p.add_argument("--ray", nargs="?", const="local", metavar="ADDRESS",
                   help="run the (case, method) pairs as Ray tasks: alone, on a new local cluster (one task per "
                        "CPU or GPU); or ADDRESS (auto, ray://host:10001); needs the `batch` extra")
    p.add_argument("--methods", nargs="+", help="methods to run (default: all)")
    p.add_argument("--output-dir", type=Path, required=True)
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("bench-speed", parents=[common],
                       help="speed benchmark: the reference preset, ours and plain sampling")
    p.add_argument("--seeds", type=int, default=3, help="source clips per row (3)")
    p.add_argument("--rows", nargs="+", choices=[*cfg.PRESETS, "plain"], default=["reference", "default", "plain"],
                   metavar="ROW",
                   help="presets to time, and plain (sampling without guidance); default among them")
    p.add_argument("--model", help="model folder (default: the shipped model)")
    p.add_argument("--output-dir", type=Path, required=True)
    p.set_defaults(func=cmd_bench_speed)

    p = sub.add_parser("demo", parents=[common], help="a transfer with the shipped model on a synthetic video")
    p.add_argument("--video", help="use this video instead of a synthetic one")
    p.add_argument("--prompt", default=None, help="target prompt (default: one that differs from the source)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--model", default=None,
                   help="model folder (default: the shipped shapes model); the synthetic clip is drawn at its size")
    p.add_argument("--reuse-every", type=int, metavar="K", default=None,
                   help="optimise every K-th guided step only (default here 1: every step, the paper's recipe; "
                        "a transfer's default is 3)")
    p.add_argument("--output-dir", type=Path, default=Path("outputs/demo"))
    p.add_argument("--overwrite", action="store_true")
    _add_limit_options(p)
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("cache", parents=[common], help="list the inversion cache's entries, or clear them")
    p.add_argument("--cache-dir", help="(default: $XDG_CACHE_HOME or ~/.cache, then motiontransfer/inversions)")
    p.add_argument("--clear", action="store_true", help="remove entries: all, or those the limits below choose")
    p.add_argument("--older-than", type=float, metavar="DAYS", help="with --clear: only entries older than this")
    p.add_argument("--larger-than", type=float, metavar="MB", help="with --clear: only entries larger than this")
    p.set_defaults(func=cmd_cache)

    p = sub.add_parser("env", parents=[common], help="versions, device, threads and the cache's location")
    p.set_defaults(func=cmd_env)

    p = sub.add_parser("report", parents=[common], help="the shapes model's quality report: a table, and JSON")
    p.add_argument("--model", default=None, help="model folder (default: the shipped shapes model)")
    p.add_argument("--n", type=int, default=60, help="text-to-video prompts (60)")
    p.add_argument("--pairs", type=int, default=20, help="motion transfer pairs (20)")
    p.add_argument("--steps", type=int, default=25, help="sampling steps of the text-to-video part (25)")
    p.add_argument("--transfer-steps", type=int, default=None,
                   help="sampling steps of the transfer part and its baseline (default: the method's, "
                        f"{cfg.TransferConfig.steps})")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--real-clips", type=int, default=200, help="world clips for the real max-jump statistic")
    p.add_argument("--vae-clips", type=int, default=20, help="world clips for the VAE round trip")
    p.add_argument("--json", type=Path, default=None, help="write the report here")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("train-classifier", parents=[common],
                       help="train the shapes world's attribute classifier on world frames")
    p.add_argument("--out", type=Path, default=None, help="folder (default: the shipped weights)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=2500)
    p.set_defaults(func=cmd_train_classifier)

    p = sub.add_parser("train", parents=[common], help="train the shipped shapes model (resumable)",
                       description="Runs every training stage not yet done in --work, resuming the one it was in.")
    p.add_argument("--work", type=Path, default=Path("checkpoints/shapes"), help="checkpoint folder")
    p.add_argument("--export", type=Path, default=None, help="write the diffusers folder here when done")
    p.add_argument("--export-only", action="store_true", help="export the last checkpoint and stop")
    p.add_argument("--family", choices=("unet", "wan"), default=None,
                   help="model family of a fresh work folder (default unet; a folder keeps its own)")
    p.add_argument("--init-from", type=Path, default=None,
                   help="start an empty work folder from an exported model (e.g. the shipped one)")
    p.add_argument("--set", type=_key_text, nargs="*", default=[], metavar="KEY=VALUE",
                   help="override a TrainConfig field")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (checkpoints move between them)")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("ui", parents=[common], help="the web UI (Gradio; needs the `ui` extra)")
    p.add_argument("--model", help="diffusers-format folder or hub id (default: the shipped shapes model)")
    p.add_argument("--host", default="127.0.0.1", help="address to serve on (127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=7860)
    p.add_argument("--output-dir", type=Path, default=Path("outputs/ui"), help="where runs are written")
    p.add_argument("--cache-dir", help="inversion cache (default: ~/.cache/motiontransfer/inversions)")
    p.add_argument("--device", help="auto, cpu, cuda, cuda:N, mps")
    p.set_defaults(func=cmd_ui)

    p = sub.add_parser("batch", parents=[common], help="run a YAML file of jobs, here or on a Ray cluster (resumable)",
                       description="Runs every job of JOBS not yet done in --output-dir; the transfer options "
                                   "below apply to every job (a job's own options win).")
    p.add_argument("jobs", type=Path, help="YAML file: jobs of video, prompts and options")
    p.add_argument("--output-dir", type=Path, required=True)
    p.add_argument("--ray", nargs="?", const="local", metavar="ADDRESS",
                   help="run the jobs as Ray tasks: alone, on a new local cluster; or ADDRESS (auto, "
                        "ray://host:10001); needs the `batch` extra")
    p.add_argument("--gpus-per-job", type=float, help="with --ray (default: 1 if the cluster has GPUs, else 0)")
    _add_method_options(p)
    p.set_defaults(func=cmd_batch)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.WARNING if args.quiet else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s" if args.debug else "%(message)s")
    for noisy in ("diffusers", "transformers", "huggingface_hub", "PIL", "matplotlib", "httpx", "ray"):
        logging.getLogger(noisy).setLevel(logging.DEBUG if args.debug else logging.ERROR)
    try:
        if not args.debug and not getattr(args, "checks_input", False):
            _quiet_libraries()
        return args.func(args)
    except MotionTransferError as e:
        if args.debug:
            raise
        print(f"error: {printable(str(e))}", file=sys.stderr)
        return 2
    except Exception as e:               # out of memory, however the allocator says it; anything else is a bug
        if not _is_oom(e) or args.debug:
            raise
        print("error: out of memory; try fewer --frames, --dtype fp16 or bf16, a lower --width/--height, or "
              "--vae-slicing", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("error: interrupted; results finished before it are whole, nothing else was kept", file=sys.stderr)
        return 130


OOM_WORDS = ("out of memory", "can't allocate memory", "cannot allocate memory", "failed to allocate",
             "insufficient memory", "std::bad_alloc")     # torch's CUDA and CPU allocators, OpenCV, the C++ runtime


def printable(text: str) -> str:
    """`text` with control characters (ANSI escapes in a file name, a NUL) shown escaped, not sent to the
    terminal."""
    return "".join(c if c.isprintable() or c == " " else repr(c)[1:-1] for c in text)


def _is_oom(e: BaseException) -> bool:
    return isinstance(e, MemoryError) or any(w in str(e).lower() for w in OOM_WORDS)


def _quiet_libraries() -> None:
    """Warnings, logs and progress bars of diffusers and transformers off (they load torch: called only once the
    arguments are parsed, so `--help` and argument errors stay light)."""
    import warnings

    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=UserWarning, module="diffusers")
    try:
        from diffusers.utils import logging as dlog
        dlog.set_verbosity_error()
        dlog.disable_progress_bar()
        from transformers.utils import logging as tlog
        tlog.set_verbosity_error()
        tlog.disable_progress_bar()
    except ImportError:
        pass


if __name__ == "__main__":
    sys.exit(main())
