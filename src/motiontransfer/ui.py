"""`motiontransfer ui`: the web UI, a Gradio app over the same public functions as the command line.

    motiontransfer ui                                   # http://127.0.0.1:7860, the shipped model
    motiontransfer ui --model ./zeroscope_v2_576w --port 8080

Upload a video or pick a bundled example, check the frames the run will use (start, stride, frames), give one
or more target prompts (one per line) and run. Inversion and sampling report their progress, with the guidance
loss at guided steps; the page then shows the source and the result side by side, the motion-fidelity score of
each result against the source, the objects' paths (with the shipped shapes model), `run.json` and every file
to download. The prompts of a run share one inversion (`transfer_many`), and later runs on the same clip read
it from the inversion cache. A score that could not be measured says so, and a low one comes with a warning
and what to try (`evaluation.selfcheck`, the same check as the command line's).

A front end only: a run is `pipeline.transfer_many`, the score `evaluation.selfcheck.check_result` (the scorer
and defaults of every front end), the plot `shapes.demo.plot_trajectories`. Runs are queued, one at a time (`demo.queue`); errors show as messages in the
page, never as tracebacks (those go to the server's log).
"""

from __future__ import annotations

import functools
import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .config import INITS, LOSSES, PRESETS, TransferConfig
from .errors import MotionTransferError

logger = logging.getLogger(__name__)

EXAMPLE_SEEDS = (10000, 10003, 10007)        # world clips offered with the shipped model (held-out seeds)
PREVIEW_SIZE = 96                            # pixels: preview frames smaller than this are shown enlarged
# (label, TransferConfig field): the numeric options on the page, shown with the config's defaults
NUMBER_OPTIONS = (("seed", "seed"), ("sampling steps", "steps"), ("guidance scale", "guidance_scale"),
                  ("Adam iterations per guided step", "iterations"))
AUTO = "model / preset default"
MAX_RUN_PROMPTS = 8                          # prompts of one run of the page (each is a whole sampling run)
MAX_PROMPT_FIELD = 4000                      # characters in the prompts field


@dataclass
class RunOutput:
    """What one press of Run shows: paths of the videos, the scores table, the plot, run.json, downloads."""

    source_video: str
    result_video: str
    scores: str                                 # Markdown: a table's header and its row
    plot: str | None
    record: dict
    files: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)      # Markdown lines under the table: not measured, low score


class App:
    """The UI's handlers as plain methods (tests call them without a browser); `build` wires them to Gradio.

    `model` is the checkpoint every run uses (None: the shipped model); `options` are TransferConfig fields
    fixed for every run (e.g. `cache_dir`, `device`); results go to `output_dir/<time>-<prompt>/`.
    """

    def __init__(self, model: str | None = None, output_dir: str | Path = "outputs/ui", options: dict | None = None):
        from .models import model_defaults

        self.model, self.output_dir, self.options = model, Path(output_dir), dict(options or {})
        self.defaults = model_defaults(model)          # reads the configs only: a bad --model fails at start-up
        self.shipped = model is None

    # ---------------------------------------------------------------------------------------- examples

    def examples(self) -> dict[str, str]:
        """Bundled example clips, {caption: path}: world clips of the shipped model's size (none for others)."""
        if not self.shipped:
            return {}
        from .shapes import world
        from .video import write_video

        directory = self.output_dir / "examples"
        out = {}
        for seed in EXAMPLE_SEEDS:
            clip = world.sample_clip(np.random.default_rng(seed), size=self.defaults.width,
                                     frames=self.defaults.frames, motion_phrase_prob=1.0)
            path = directory / f"world-{seed}.mp4"
            if not path.exists():
                path.parent.mkdir(parents=True, exist_ok=True)
                write_video(path, clip.frames, 8.0)
            out[clip.caption] = str(path)
        return out

    # ----------------------------------------------------------------------------------------- preview

    def preview(self, video: str | None, start: float, stride: float, frames: float) -> tuple[list, str]:
        """The frames a run will take from `video` (before fitting to the model), and a line about them."""
        from .errors import VideoError
        from .video import read_video

        if not video:
            return [], "Upload a video or pick an example."
        start, stride = page_number("start", start, True), page_number("stride", stride, True)
        count = page_number("frames", frames, True) or self.defaults.frames
        try:
            v = read_video(video, frames=count, stride=stride, start=start)
        except VideoError:                   # too few frames: show what there is, then say so (or raise the rest)
            v = read_video(video, stride=stride, start=start)
        shown = [_enlarge(f) for f in v.frames]
        note = (f"{len(v.frames)} frames of {v.frames.shape[2]}x{v.frames.shape[1]} at {v.fps:g} fps; the model "
                f"takes {count} at {self.defaults.width}x{self.defaults.height}")
        if len(v.frames) < count:
            note += " (**too few**: lower *frames*, *start* or *stride*)"
        return shown, note

    # ---------------------------------------------------------------------------------------------- run

    def options_for(self, start: float = 0, stride: float = 1, frames: float = 0, source_prompt: str = "",
                    init: str = AUTO, loss: str = AUTO, numbers: dict[str, float] | None = None) -> dict[str, Any]:
        """The TransferConfig fields a run passes on: the page's values, less those at the config's default."""
        defaults = TransferConfig()
        options = {**self.options, "start": page_number("start", start, True),
                   "stride": page_number("stride", stride, True)}
        if page_number("frames", frames, True):
            options["frames"] = page_number("frames", frames, True)
        if source_prompt and source_prompt.strip():
            options["source_prompt"] = source_prompt.strip()
        if init != AUTO:
            options["init"] = init
        if loss != AUTO:
            options["loss"] = loss
        for name, value in (numbers or {}).items():
            if value is None:
                continue
            value = page_number(name, value, isinstance(getattr(defaults, name), int) or name == "seed")
            if value != getattr(defaults, name):
                options[name] = value
        if self.model is not None:
            options["model"] = self.model
        return options

    def run(self, video: str | None, prompts: str, source_prompt: str = "", preset: str = "default",
            start: float = 0, stride: float = 1, frames: float = 0, init: str = AUTO, loss: str = AUTO,
            numbers: dict[str, float] | None = None,
            progress: Callable[[float, str], None] | None = None) -> list[RunOutput]:
        """Transfers `video` to every prompt (one per line of `prompts`), scores each result, writes plots.

        `numbers` are the page's numeric options by TransferConfig field; one equal to the config's default is
        left out, so that the preset's and the model's own values apply. `progress(fraction, text)` is told
        of every step.
        """
        from .evaluation.selfcheck import check_result, describe
        from .pipeline import slug, transfer_many
        from .video import write_video

        if not video:
            raise MotionTransferError("no video: upload one or pick an example")
        if len(prompts or "") > MAX_PROMPT_FIELD:
            raise MotionTransferError(f"the prompts are {len(prompts):,} characters; at most {MAX_PROMPT_FIELD:,} "
                                      f"(one prompt per line, up to {MAX_RUN_PROMPTS})")
        prompt_list = [p.strip() for p in (prompts or "").splitlines() if p.strip()]
        if not prompt_list:
            raise MotionTransferError("no target prompt: write at least one (one per line)")
        if len(prompt_list) > MAX_RUN_PROMPTS:
            raise MotionTransferError(f"{len(prompt_list)} prompts; a run of the page takes at most "
                                      f"{MAX_RUN_PROMPTS} (a batch jobs file takes more)")
        options = self.options_for(start, stride, frames, source_prompt, init, loss, numbers)
        name = f"{time.strftime('%Y%m%d-%H%M%S')}-{slug(prompt_list[0], 30)}"
        out, k = self.output_dir / name, 1
        while out.exists():                          # two runs in one second
            k += 1
            out = self.output_dir / f"{name}-{k}"
        results = transfer_many(video, prompt_list, output_dir=out, quiet=True, preset=preset,
                                on_progress=_progress_text(progress) if progress else None, **options)
        shown = []
        for r in results:
            write_video(r.output_dir / "source.mp4", r.source, r.fps, min_size=256)
            check = check_result(r)
            lines = ["| prompt | motion fidelity | one-sided | seconds | inversion |", "|---|---|---|---|---|",
                     f"| {r.prompt} | {_cell(check['motion_fidelity'])} | {_cell(check['motion_fidelity_one_sided'])} "
                     f"| {sum(r.timings.values()):.1f} | {'cached' if r.inversion_cached else 'computed'} |"]
            notes = [f"*{r.prompt}*: {line}" for line in describe(check)
                     if check["motion_fidelity"] is None or line.startswith("warning")]
            plot = None
            if self.shipped:
                from .shapes.demo import plot_trajectories

                plot = str(r.output_dir / "trajectory.png")
                plot_trajectories(r.source, r.frames, Path(plot), f"source  ->  {r.prompt}")
            files = [str(r.output_dir / n) for n in ("result.mp4", "comparison.mp4", "source.mp4", "run.json")]
            shown.append(RunOutput(source_video=str(r.output_dir / "source.mp4"),
                                   result_video=str(r.output_dir / "result.mp4"), scores="\n".join(lines),
                                   plot=plot, record=r.record, files=files + ([plot] if plot else []), notes=notes))
        return shown

    # -------------------------------------------------------------------------------------------- gradio

    def build(self):
        """The Gradio Blocks app, queued one run at a time."""
        gr = _gradio()

        examples = self.examples()
        defaults = TransferConfig()

        def guarded(fn):
            """Errors as messages: a MotionTransferError's own words, anything else named (traceback logged)."""
            @functools.wraps(fn)                  # keeps the signature: Gradio finds the gr.Progress argument
            def call(*args, **kwargs):
                try:
                    return fn(*args, **kwargs)
                except MotionTransferError as e:
                    raise gr.Error(str(e), duration=None) from None
                except Exception as e:                               # noqa: BLE001 - shown, and logged
                    logger.exception("the UI's %s failed", fn.__name__)
                    raise gr.Error(f"{type(e).__name__}: {e}", duration=None) from None
            return call

        with gr.Blocks(title="motiontransfer") as demo:
            gr.Markdown("## motiontransfer: the motion of a video, re-rendered as a prompt describes\n"
                        f"Model: `{self.model or 'the shipped shapes model'}` "
                        f"({self.defaults.frames} frames of {self.defaults.width}x{self.defaults.height}).")
            with gr.Row():
                with gr.Column(scale=1):
                    video = gr.Video(label="source video", sources=["upload"], elem_id="source-video", height=260)
                    if examples:
                        example = gr.Dropdown(choices=list(examples), value=None, label="or a bundled example",
                                              elem_id="example")
                    with gr.Row():
                        start = gr.Number(value=0, precision=0, minimum=0, label="start frame", elem_id="start")
                        stride = gr.Number(value=1, precision=0, minimum=1, label="stride", elem_id="stride")
                        frames = gr.Number(value=0, precision=0, minimum=0, label="frames (0: the model's)",
                                           elem_id="frames")
                    gallery = gr.Gallery(label="frames used", columns=8, height=140, elem_id="preview")
                    note = gr.Markdown(elem_id="preview-note")
                    prompts = gr.Textbox(label="target prompts, one per line", lines=2, elem_id="prompts",
                                         placeholder="a green star on a black background")
                    source_prompt = gr.Textbox(label="source prompt (optional)", elem_id="source-prompt")
                    run = gr.Button("Run", variant="primary", elem_id="run")
                    with gr.Accordion("options", open=False):
                        preset = gr.Dropdown(choices=list(PRESETS), value="default", label="preset")
                        init = gr.Dropdown(choices=[AUTO, *INITS], value=AUTO, label="initial latent")
                        loss = gr.Dropdown(choices=[AUTO, *LOSSES], value=AUTO, label="guidance loss")
                        numbers = {name: gr.Number(value=0 if name == "seed" else getattr(defaults, name),
                                                   label=label, elem_id=f"opt-{name}")
                                   for label, name in NUMBER_OPTIONS}
                with gr.Column(scale=1):
                    with gr.Row():
                        source_out = gr.Video(label="source (as used)", elem_id="source-out", interactive=False,
                                              height=260)
                        result_out = gr.Video(label="result", elem_id="result", interactive=False, height=260)
                    scores = gr.Markdown(elem_id="scores")
                    plot = gr.Image(label="object paths (source and result)", visible=self.shipped,
                                    elem_id="plot", interactive=False)
                    files = gr.File(label="downloads", file_count="multiple", elem_id="files", interactive=False)
                    record = gr.JSON(label="run.json", elem_id="record")

            def on_preview(v, a, b, c):
                return self.preview(v, a, b, c)

            def on_run(v, text, src, pre, a, b, c, ini, los, *values, progress=gr.Progress()):
                def report(fraction, message):
                    progress(fraction, desc=message)
                shown = self.run(v, text, src, pre, a, b, c, ini, los,
                                 dict(zip([n for _, n in NUMBER_OPTIONS], values)), progress=report)
                first = shown[0]
                table = "\n".join([shown[0].scores] + [s.scores.splitlines()[-1] for s in shown[1:]])
                notes = [n for s in shown for n in s.notes]
                if notes:
                    table += "\n\n" + "\n\n".join(notes)
                return (first.source_video, first.result_video, table, first.plot,
                        [f for s in shown for f in s.files], first.record)

            trim = [video, start, stride, frames]
            for component in trim:
                component.change(guarded(on_preview), trim, [gallery, note])
            if examples:
                example.change(lambda caption: examples.get(caption), example, video)
            run.click(guarded(on_run), [video, prompts, source_prompt, preset, start, stride, frames, init, loss,
                                        *numbers.values()],
                      [source_out, result_out, scores, plot, files, record], concurrency_limit=1,
                      show_progress_on=[result_out])
        demo.queue(default_concurrency_limit=1)
        return demo


def _gradio():
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")       # no calls home from a local tool
    try:
        import gradio
    except ImportError:
        raise MotionTransferError("the web UI needs Gradio: pip install 'motiontransfer[ui]'") from None
    return gradio


def _cell(value: float | None) -> str:
    return "not measured" if value is None else f"{value:.3f}"


def _enlarge(frame: np.ndarray) -> np.ndarray:
    """A small frame repeated (nearest neighbour) to at least PREVIEW_SIZE pixels, for the preview."""
    factor = max(1, -(-PREVIEW_SIZE // min(frame.shape[:2])))
    return frame.repeat(factor, axis=0).repeat(factor, axis=1)


def _progress_text(progress: Callable[[float, str], None]):
    """`ProgressEvent`s as (fraction of the phase, "sampling 2/2: step 7/50, guidance loss 0.1234")."""
    def on_event(e) -> None:
        name = e.phase if e.prompt_count == 1 or e.phase == "inversion" else \
            f"{e.phase} {e.prompt_index + 1}/{e.prompt_count}"
        text = f"{name}: step {e.step}/{e.total}"
        if e.loss is not None:
            text += f", guidance loss {e.loss:.4f}"
        progress(e.step / e.total, text)
    return on_event


def page_number(name: str, value, whole: bool) -> int | float:
    """A number field of the page (Gradio gives floats, a raw request anything): finite, and whole where the
    option is an integer; a ConfigError in one line otherwise, before anything runs."""
    from .errors import ConfigError

    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, (int, float)) or abs(value) > 2 ** 63 - 1 \
            or not math.isfinite(value) or (whole and float(value) != int(value)):
        kind = "a whole number" if whole else "a finite number"
        raise ConfigError(f"{name.replace('_', ' ')} must be {kind}, got {repr(value)[:40]}")
    return int(value) if whole else float(value)


def serve(model: str | None = None, *, host: str = "127.0.0.1", port: int = 7860,
          output_dir: str | Path = "outputs/ui", options: dict | None = None, block: bool = True):
    """Builds the app and serves it on host:port (127.0.0.1 by default: this machine only). Returns the app
    (with `block=False`, while it serves in the background: `app.close()` stops it)."""
    demo = App(model, output_dir, options).build()
    demo.launch(server_name=host, server_port=port, prevent_thread_lock=not block, show_error=False,
                inbrowser=False, quiet=True, allowed_paths=[str(Path(output_dir).resolve())])
    return demo


__all__ = ["App", "RunOutput", "serve"]
