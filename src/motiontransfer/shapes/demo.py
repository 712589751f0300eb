"""`motiontransfer demo`: a motion transfer with the shipped shapes model, start to finish, on the CPU.

Makes a source clip in the synthetic world (or takes a video), picks a target prompt whose shape and colour
both differ from the source's, runs the method, and writes next to the usual outputs `source.mp4` (its frames,
lossless, in `source_frames/`) and `trajectory.png`: the object's path in the source and in the result, frame by
frame. run.json records both
judgements of the result: the objects' velocity cosine (`tracking.trajectory_agreement`) and the motion fidelity
that every front end reports (`evaluation.selfcheck`).

The demo shows the method itself: every guided step is optimised (`reuse_every=1`, the paper's recipe at the
default 25 steps) unless the caller sets `reuse_every`. The cheaper default (`--reuse-every 3`) kept the motion
on the validation pairs it was chosen on, but on the demo's clip its reused change sends the object the wrong
way (README, "Cheaper guidance"); the demo has the time to spare (about 10 s more on 2 CPU cores).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import ConfigError
from ..evaluation.selfcheck import self_check
from ..models import model_defaults
from ..pipeline import TransferResult, result_folders, transfer, write_outputs
from ..video import atomic_path, write_frames, write_video
from . import world

logger = logging.getLogger(__name__)

DEMO_REUSE_EVERY = 1        # every guided step optimised: the method as published (module doc)


def target_prompt(params: world.ClipParams) -> str:
    """Another shape and another colour than the source's, on the same background (`world.other_looks`),
    picked by the source's shape."""
    shapes, colours = world.other_looks(params)
    i = world.SHAPES.index(params.shape)
    return world.plain_caption(colours[i % len(colours)], shapes[i % len(shapes)], params.background)


def plot_trajectories(source: np.ndarray, result: np.ndarray, path: Path, title: str) -> dict:
    """Both objects' centres (segmented), drawn over the first source frame; returns the agreement."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .tracking import object_track, trajectory_agreement

    a, b = object_track(source), object_track(result)
    h, w = source.shape[1:3]
    fig, axes = plt.subplots(1, 2, figsize=(8, 4), dpi=110)
    axes[0].imshow(source[0], extent=(0, w, h, 0))
    for track, label, style in ((a, "source", "o-"), (b, "result", "s--")):
        axes[0].plot(track[:, 0], track[:, 1], style, ms=3, label=label)
    axes[0].set_title("object centre, pixels")
    axes[0].legend(fontsize=8)
    frames = np.arange(len(a))
    for k, name in enumerate("xy"):
        axes[1].plot(frames, a[:, k], "o-", ms=3, label=f"source {name}")
        axes[1].plot(frames, b[:, k], "s--", ms=3, label=f"result {name}")
    axes[1].set_xlabel("frame")
    axes[1].set_ylabel("pixels")
    axes[1].legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp)
    plt.close(fig)
    return trajectory_agreement(a, b)


@dataclass
class DemoResult:
    """What `demo` made: the transfer itself, and how well the result's object follows the source's."""

    output_dir: Path
    source: str                     # the source clip's caption, or the video's file name
    prompt: str
    trajectory: dict                # `tracking.trajectory_agreement` of the two objects' centres
    transfer: TransferResult
    self_check: dict                # `evaluation.selfcheck.self_check`: the result's motion fidelity


def demo(video: str | Path | None = None, prompt: str | None = None, output_dir: str | Path = "outputs/demo", *,
         overwrite: bool = False, seed: int = 0, quiet: bool = False, limits=None, **options) -> DemoResult:
    """A transfer with the shipped model (or `options["model"]`) on a world clip of its size, or on `video`
    (then `prompt` is needed). `options` are `TransferConfig` fields; `reuse_every` is 1 unless given (module
    doc). An earlier result in `output_dir` is replaced only with `overwrite`; the folder is written whole, like
    a transfer's (`pipeline.write_outputs`)."""
    out = Path(output_dir)
    options.setdefault("reuse_every", DEMO_REUSE_EVERY)
    if video is None:
        size = model_defaults(options.get("model")).width
        clip = world.sample_clip(np.random.default_rng(10_000 + seed), size=size, frames=16)
        frames, fps = clip.frames, 8.0
        prompt = prompt or target_prompt(clip.params)
        source_caption = clip.caption
    else:
        if prompt is None:
            raise ConfigError("--prompt is needed with --video")
        frames, fps, source_caption = video, None, Path(video).name    # the transfer reads only what it needs
    with result_folders([out], overwrite):
        result = transfer(frames, prompt, output_dir=False, quiet=quiet, seed=seed, fps=fps, limits=limits,
                          **options)
        result.output_dir = out

        def extras(folder: Path) -> None:
            write_video(folder / "source.mp4", result.source, result.fps, min_size=256)
            write_frames(folder / "source_frames", result.source)      # lossless, as frames/ is: `score` on the
                                                                          # two folders gives the demo's number
            result.record["demo"] = {"source": source_caption,
                                     "trajectory": plot_trajectories(result.source, result.frames,
                                                                     folder / "trajectory.png",
                                                                     f"{source_caption}  ->  {prompt}")}
            result.record["self_check"] = self_check(result.source, result.frames)

        write_outputs(out, result, result.record, extra=extras)
    agreement, check = result.record["demo"]["trajectory"], result.record["self_check"]
    logger.info("source: %s\ntarget: %s\n%.1f s", source_caption, prompt, sum(result.timings.values()))
    return DemoResult(output_dir=out, source=source_caption, prompt=prompt, trajectory=agreement, transfer=result,
                      self_check=check)
