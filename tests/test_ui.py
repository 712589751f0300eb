"""The web UI: its handlers called directly, then the whole page driven by Playwright in headless Chromium.

The browser test needs gradio, playwright (pip) and Debian's chromium at /usr/bin/chromium (browser downloads
are not possible here); it is skipped without them unless MT_REQUIRE_BROWSER=1 (set by .ci/run). With
MT_UI_SCREENSHOTS=DIR it drives the shipped model on a bundled example instead of the tiny random one and saves
one screenshot per state into DIR (how docs/ui/*.png are made: see the README).
"""

from __future__ import annotations

import os
import re
import socket
from pathlib import Path

import numpy as np
import pytest

from motiontransfer.errors import MotionTransferError
from motiontransfer.video import write_video

from conftest import moving_square

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture()
def app(tiny_model, tmp_path):
    from motiontransfer.ui import App

    return App(str(tiny_model), tmp_path / "ui", {"cache_dir": str(tmp_path / "cache")})


@pytest.fixture()
def clip(tmp_path) -> Path:
    path = tmp_path / "square.mp4"
    write_video(path, moving_square(frames=8), 8.0)
    return path


def test_preview_shows_the_frames_a_run_takes(app, clip):
    frames, note = app.preview(str(clip), start=2, stride=2, frames=0)
    assert len(frames) == 3 and frames[0].shape == (96, 96, 3)          # frames 2, 4, 6 of 8; 32 px shown x3
    assert "too few" in note
    frames, note = app.preview(str(clip), start=0, stride=1, frames=0)
    assert len(frames) == 4 and "too few" not in note                    # the tiny model takes 4
    assert app.preview(None, 0, 1, 0) == ([], "Upload a video or pick an example.")


def test_run_writes_results_scores_and_shares_the_inversion(app, clip):
    messages = []
    shown = app.run(str(clip), "a green star\n\na blue circle\n", numbers={"seed": 1, "steps": 4},
                    progress=lambda fraction, text: messages.append((fraction, text)))
    assert [Path(s.result_video).exists() for s in shown] == [True, True]
    assert shown[0].record["config"]["steps"] == 4 and shown[0].record["seed"] == 1
    assert shown[1].record["prompt"] == "a blue circle" and shown[0].plot is None          # not the shipped model
    assert "motion fidelity" in shown[0].scores and all(Path(f).exists() for s in shown for f in s.files)
    assert any(t.startswith("inversion: step") for _, t in messages)
    assert any(t.startswith("sampling 2/2: step 4/4") for _, t in messages)
    assert any("guidance loss" in t for _, t in messages) and all(0 < f <= 1 for f, _ in messages)
    again = app.run(str(clip), "a red star", numbers={"seed": 1, "steps": 4})
    assert "cached" in again[0].scores                           # the same clip: the inversion is reused


def test_run_errors_are_messages(app, clip, tmp_path):
    with pytest.raises(MotionTransferError, match="no target prompt"):
        app.run(str(clip), "  \n")
    with pytest.raises(MotionTransferError, match="no video"):
        app.run(None, "a red star")
    bad = tmp_path / "bad.mp4"
    bad.write_text("not a video")
    with pytest.raises(MotionTransferError):
        app.run(str(bad), "a red star", numbers={"steps": 2})


@pytest.mark.parametrize("numbers, message", [
    ({"steps": float("nan")}, "steps must be a whole number"), ({"seed": 1e30}, "seed must be a whole number"),
    ({"guidance_scale": float("inf")}, "guidance scale must be a finite number"),
    ({"iterations": "3"}, "iterations must be a whole number"), ({"steps": 2.5}, "steps must be a whole number")])
def test_page_numbers_that_are_not_numbers_are_messages(app, clip, numbers, message):
    with pytest.raises(MotionTransferError, match=message):
        app.run(str(clip), "a red star", numbers=numbers)
    with pytest.raises(MotionTransferError, match="start must be a whole number"):
        app.preview(str(clip), start=float("nan"), stride=1, frames=0)


def test_prompts_of_the_page_are_capped_in_count_and_length(app, clip):
    with pytest.raises(MotionTransferError, match="at most 8"):
        app.run(str(clip), "\n".join(f"a red star {i}" for i in range(9)))
    with pytest.raises(MotionTransferError, match="characters; at most 4,000"):
        app.run(str(clip), "x" * 1_000_000)


def test_options_at_their_defaults_leave_the_presets_and_models_values(app):
    options = app.options_for(numbers={"seed": 0, "steps": 25, "iterations": 10, "guidance_scale": 10.0})
    assert options == {"cache_dir": app.options["cache_dir"], "start": 0, "stride": 1, "seed": 0, "model": app.model}
    options = app.options_for(2, 3, 8, " a square ", "random", "smm", {"steps": 20.0, "guidance_scale": 7.5})
    assert {k: options[k] for k in ("start", "stride", "frames", "source_prompt", "init", "loss", "steps",
                                    "guidance_scale")} == {"start": 2, "stride": 3, "frames": 8,
                                                           "source_prompt": "a square", "init": "random",
                                                           "loss": "smm", "steps": 20, "guidance_scale": 7.5}
    assert isinstance(options["steps"], int)


# ------------------------------------------------------------------------------------------------ the browser

def _browser_ready() -> str | None:
    """Why the browser test cannot run here, or None."""
    for module in ("gradio", "playwright"):
        try:
            __import__(module)
        except ImportError:
            return f"{module} is not installed (pip install -e '.[ui,test]')"
    if not Path(CHROMIUM).exists():
        return f"no browser at {CHROMIUM} (apt-get install chromium)"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_the_page_runs_a_transfer_in_headless_chromium(tiny_model, tmp_path, clip):
    missing = _browser_ready()
    if missing:
        if os.environ.get("MT_REQUIRE_BROWSER") == "1":
            pytest.fail(missing)
        pytest.skip(missing)
    from playwright.sync_api import expect, sync_playwright

    from motiontransfer.ui import serve

    shots = Path(os.environ["MT_UI_SCREENSHOTS"]) if os.environ.get("MT_UI_SCREENSHOTS") else None
    port = _free_port()
    options = {"cache_dir": str(tmp_path / "cache")}
    if shots:                                  # the README's pictures: the shipped model on a bundled example
        demo = serve(None, port=port, output_dir=tmp_path / "ui", options=options, block=False)
        steps, prompt = 30, "a green star on a white background"
    else:
        demo = serve(str(tiny_model), port=port, output_dir=tmp_path / "ui", options=options, block=False)
        steps, prompt = 12, "a green star"
    try:
        with sync_playwright() as p:
            # launch() gives the browser a fresh temporary profile of its own
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
            page = browser.new_page(viewport={"width": 1280, "height": 960})
            page.goto(f"http://127.0.0.1:{port}/")

            def shot(name: str) -> None:
                if shots:
                    page.evaluate("window.scrollTo(0, 0)")
                    shots.mkdir(parents=True, exist_ok=True)
                    from PIL import Image

                    path = shots / f"{name}.png"
                    page.screenshot(path=str(path))
                    Image.open(path).convert("RGB").quantize(64).save(path, optimize=True)   # small PNGs

            # the page: an upload and a prompt field
            upload = page.locator("#source-video input[type=file]")
            expect(upload).to_have_count(1)
            expect(page.locator("#prompts textarea")).to_be_visible()
            if shots:
                page.locator("#example input").click()
                page.get_by_role("option").first.click()
            else:
                upload.set_input_files(str(clip))
            expect(page.locator("#preview img").first).to_be_visible(timeout=30_000)   # the frames to be used
            page.locator("#prompts textarea").fill(prompt)
            page.get_by_text("options", exact=True).click()
            page.locator("#opt-steps input").fill(str(steps))
            page.locator("#opt-seed input").fill("1")
            page.get_by_text("options", exact=True).click()           # closed again
            shot("1-upload")

            page.locator("#run").click()
            # progress (inversion, then sampling with the guidance loss) while it runs
            running = page.get_by_text(re.compile(r"sampling: step \d+/\d+, guidance loss")) if shots else \
                page.get_by_text("sampling: step").or_(page.get_by_text("inversion: step"))
            expect(running.first).to_be_visible(timeout=120_000)
            shot("2-running")
            expect(page.locator("#result video")).to_have_count(1, timeout=300_000)
            expect(page.locator("#scores")).to_contain_text("motion fidelity")
            expect(page.locator("#files").get_by_role("cell", name="result.mp4")).to_have_count(1)
            page.wait_for_timeout(500)
            shot("3-result")
            runs = [d for d in (tmp_path / "ui").iterdir() if d.name != "examples"]
            assert len(runs) == 1 and (runs[0] / "run.json").exists()

            # a file that is not a video: a message in the page, no traceback
            bad = tmp_path / "notes.mp4"
            bad.write_text("not a video")
            page.locator("#source-video button[aria-label='Clear']").first.click() \
                if page.locator("#source-video button[aria-label='Clear']").count() else None
            page.locator("#source-video input[type=file]").set_input_files(str(bad))
            page.locator("#run").click()
            error = page.locator(".toast-body").filter(has_text="notes")
            expect(error.first).to_be_visible(timeout=30_000)
            assert "Traceback" not in page.content()
            shot("4-error")
            browser.close()
    finally:
        demo.close()
