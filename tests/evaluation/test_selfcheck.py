"""One scorer everywhere: the self-check after a transfer, and every front end's number for the same pair."""

import dataclasses
import json

import numpy as np
import pytest

from motiontransfer.evaluation import selfcheck
from motiontransfer.evaluation.metrics import score_files, score_videos
from motiontransfer.shapes import world


@pytest.fixture(scope="module")
def demo_result(tiny_model, tmp_path_factory):
    """The demo on the tiny model: a world clip transferred, with its folder."""
    from motiontransfer.shapes.demo import demo

    folder = tmp_path_factory.mktemp("demo")
    return demo(output_dir=folder / "demo", seed=0, model=str(tiny_model), steps=3,
                cache_dir=str(folder / "cache"), quiet=True)


def test_describe_says_not_measured_and_warns_when_low():
    assert selfcheck.describe({"motion_fidelity": None, "reason": "not measured: too few tracks survived"}) == [
        "motion fidelity against the source: not measured: too few tracks survived"]
    good = {"motion_fidelity": 0.8, "low": False, "low_below": selfcheck.LOW_SCORE, "reason": None}
    assert selfcheck.describe(good) == ["motion fidelity against the source: 0.80"]
    lines = selfcheck.describe({**good, "motion_fidelity": 0.1, "low": True})
    assert len(lines) == 2 and lines[1].startswith("warning: motion fidelity 0.10 is low")
    for advice in ("--region", "--model", "--reuse-every 1"):
        assert advice in lines[1]


def test_self_check_scores_a_held_still_result_low_and_the_source_itself_high():
    clip = world.render(world.sample_params(np.random.default_rng(3), motion="linear"), 32, 16)
    itself = selfcheck.self_check(clip.frames, clip.frames)
    assert itself["motion_fidelity"] == pytest.approx(1.0) and itself["low"] is False
    still = selfcheck.self_check(clip.frames, np.repeat(clip.frames[:1], 16, axis=0))
    assert still["motion_fidelity"] < selfcheck.LOW_SCORE and still["low"] is True
    flat = selfcheck.self_check(clip.frames, np.full_like(clip.frames, 128))
    assert flat["motion_fidelity"] is not None and flat["low"] is True      # a blank result moves nowhere


def test_demo_records_the_score_every_front_end_gives(demo_result):
    """The demo's run.json, score_videos, the bench's and the report's scoring, and the CLI's check agree."""
    from motiontransfer.evaluation.suite import Case, score_case
    from motiontransfer.shapes import report

    done = demo_result
    source, frames = done.transfer.source, done.transfer.frames
    recorded = json.loads((done.output_dir / "run.json").read_text())["self_check"]
    expected = score_videos(source, frames)["motion_fidelity"]
    assert recorded["motion_fidelity"] == done.self_check["motion_fidelity"] == expected
    assert selfcheck.self_check(source, frames)["motion_fidelity"] == expected        # CLI transfer, UI, batch
    case = Case(name="demo", frames=source, fps=8.0, prompt=done.prompt)
    bench = score_case(case, frames, {"text_fidelity": "attributes"})
    assert bench["motion_fidelity"] == expected
    clip = world.sample_clip(np.random.default_rng(10_000), size=source.shape[1], frames=16)
    clip = dataclasses.replace(clip, frames=clip.frames[:len(source)], centres=clip.centres[:len(source)])
    assert np.array_equal(clip.frames, source)                      # the demo's world clip (the model's frames)
    target = world.parse_caption(done.prompt)
    assert report._judge(frames, target, clip)["motion_fidelity"] == expected
    # `motiontransfer score` on the lossless frames the demo wrote: exactly its number
    lossless = score_files(done.output_dir / "source_frames", done.output_dir / "frames")
    assert lossless["motion_fidelity"] == expected
    # and on the source's H.264 preview: the codec's noise moves it a little
    on_files = score_files(done.output_dir / "source.mp4", done.output_dir / "frames")
    assert on_files["size"] == list(source.shape[1:3])                              # the preview is undone
    if expected is None:
        assert on_files["motion_fidelity"] is None
    else:
        assert on_files["motion_fidelity"] == pytest.approx(expected, abs=0.05)


def test_ui_and_batch_report_the_scorers_number(tiny_model, tmp_path):
    from conftest import moving_square

    from motiontransfer.batch import Job, run_job
    from motiontransfer.pipeline import transfer
    from motiontransfer.ui import App
    from motiontransfer.video import write_video

    clip = tmp_path / "square.mp4"
    write_video(clip, moving_square(frames=8), 8.0)
    options = {"model": str(tiny_model), "steps": 3, "seed": 2, "cache_dir": str(tmp_path / "cache")}
    direct = transfer(clip, "a green star", output_dir=False, quiet=True, **options)
    expected = score_videos(direct.source, direct.frames)

    shown = App(str(tiny_model), tmp_path / "ui", {"cache_dir": options["cache_dir"]}).run(
        str(clip), "a green star", numbers={"seed": 2, "steps": 3})[0]
    row = shown.scores.splitlines()[-1]
    value = expected["motion_fidelity"]
    assert (f"| {value:.3f} |" if value is not None else "| not measured |") in row
    assert shown.record["self_check"]["motion_fidelity"] == value
    written = next((tmp_path / "ui").glob("*/run.json"))
    assert json.loads(written.read_text())["self_check"] == shown.record["self_check"]

    job = Job(name="one", video=str(clip), prompts=("a green star",), options=dict(options))
    record = run_job(job, tmp_path / "batch")
    assert record["results"][0]["motion_fidelity"] == value
    assert json.loads((tmp_path / "batch" / "one" / "run.json").read_text())["self_check"]["motion_fidelity"] == value
