"""`motiontransfer demo`: a motion transfer with the shipped shapes model, start to finish, on the CPU.

Makes a source clip in the synthetic world (or takes a video), picks a target prompt whose shape and colour
both differ from the source's, runs the method with its defaults, and writes next to the usual outputs
`source.mp4` and `trajectory.png`: the object's path in the source and in the result, frame by frame.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from . import world
from ..pipeline import transfer
from ..video import atomic_write_text, read_video, write_video


def target_prompt(params: world.ClipParams) -> str:
    """Another shape and another colour than the source's, on the same background."""
    colours = [c for c in world.allowed_colours(params.background) if c != params.colour]
    shapes = [s for s in world.SHAPES if s != params.shape]
    i = world.SHAPES.index(params.shape)
    return f"a {colours[i % len(colours)]} {shapes[i % len(shapes)]} on a {params.background} background"


def plot_trajectories(source: np.ndarray, result: np.ndarray, path: Path, title: str) -> dict:
    """Both objects' centres (segmented), drawn over the first source frame; returns the agreement."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .report import object_track, trajectory_agreement

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
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(path)
    return trajectory_agreement(a, b)


def demo(video: str | None = None, prompt: str | None = None, output_dir: str | Path = "outputs/demo", *,
         overwrite: bool = False, seed: int = 0, quiet: bool = False, **options) -> Path:
    out = Path(output_dir)
    previous = out / "run.json"
    if previous.exists() and "demo" in json.loads(previous.read_text()):
        overwrite = True                        # an earlier demo's folder: running the demo again replaces it
    if video is None:
        clip = world.sample_clip(np.random.default_rng(10_000 + seed), size=32, frames=16)
        frames, fps = clip.frames, 8.0
        prompt = prompt or target_prompt(clip.params)
        source_caption = clip.caption
    else:
        v = read_video(video)
        frames, fps, source_caption = v.frames, v.fps, Path(video).name
        if prompt is None:
            raise SystemExit("--prompt is needed with --video")
    result = transfer(frames, prompt, output_dir=out, overwrite=overwrite, quiet=quiet, seed=seed, fps=fps,
                      **options)
    write_video(out / "source.mp4", result.source, fps, min_size=256)
    agreement = plot_trajectories(result.source, result.frames, out / "trajectory.png",
                                  f"{source_caption}  ->  {prompt}")
    record = json.loads((out / "run.json").read_text())
    record["demo"] = {"source": source_caption, "trajectory": agreement}
    atomic_write_text(out / "run.json", json.dumps(record, indent=2))
    if not quiet:
        print(f"source: {source_caption}\ntarget: {prompt}\nvelocity cosine {agreement['velocity_cosine']:.2f}, "
              f"centre error {agreement['centre_error']:.1f} px, {sum(result.timings.values()):.1f} s")
    return out
