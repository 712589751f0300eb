"""The demo on a tiny random model: what it writes, and that it replaces an earlier result only when asked."""

import json
from pathlib import Path

import numpy as np
import pytest

from motiontransfer.errors import ConfigError, OutputError
from motiontransfer.shapes import world
from motiontransfer.shapes.demo import demo, target_prompt


@pytest.fixture()
def opts(tiny_model, tmp_path):
    return {"model": str(tiny_model), "steps": 6, "cache_dir": str(tmp_path / "cache"), "quiet": True}


def test_demo_writes_source_result_comparison_and_trajectory_plot(opts, tmp_path):
    done = demo(output_dir=tmp_path / "demo", seed=0, model=opts["model"], steps=3, cache_dir=opts["cache_dir"],
                quiet=True)
    out = done.output_dir
    for name in ("source.mp4", "result.mp4", "comparison.mp4", "trajectory.png", "run.json"):
        assert (out / name).stat().st_size > 0, name
    record = json.loads((out / "run.json").read_text())
    assert "velocity_cosine" in record["demo"]["trajectory"]
    assert record["prompt"] != record["demo"]["source"] == done.source
    assert done.trajectory == record["demo"]["trajectory"] and done.transfer.prompt == done.prompt


def test_demo_replaces_its_earlier_result_only_with_overwrite(opts, tmp_path):
    kwargs = dict(output_dir=tmp_path / "demo", model=opts["model"], steps=2, cache_dir=opts["cache_dir"], quiet=True)
    demo(seed=0, **kwargs)
    with pytest.raises(OutputError, match="--overwrite"):
        demo(seed=1, **kwargs)
    assert json.loads((tmp_path / "demo" / "run.json").read_text())["seed"] == 0
    demo(seed=1, overwrite=True, **kwargs)
    assert json.loads((tmp_path / "demo" / "run.json").read_text())["seed"] == 1


def test_target_prompt_changes_shape_and_colour_and_keeps_the_background():
    for seed in range(20):
        p = world.sample_clip(np.random.default_rng(seed)).params
        asked = world.parse_caption(target_prompt(p))
        assert asked["shape"] != p.shape and asked["colour"] != p.colour and asked["background"] == p.background


def test_a_video_needs_a_prompt(tmp_path):
    with pytest.raises(ConfigError, match="--prompt"):
        demo(video=tmp_path / "clip.mp4", output_dir=tmp_path / "demo")


def test_demo_command_takes_another_model(tiny_model, tmp_path, monkeypatch, capsys):
    from motiontransfer import cli

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    out = tmp_path / "demo"
    assert cli.main(["demo", "--model", str(tiny_model), "--output-dir", str(out), "--quiet"]) == 0
    record = json.loads((out / "run.json").read_text())
    assert Path(record["model"]["path"]).resolve() == Path(tiny_model).resolve()
    assert (out / "trajectory.png").is_file() and f"wrote {out}" in capsys.readouterr().out


def test_demo_optimises_every_guided_step_unless_told(tiny_model, tmp_path, monkeypatch):
    from motiontransfer import cli

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    for name, extra, every in (("plain", [], 1), ("cheap", ["--reuse-every", "3"], 3)):
        out = tmp_path / name
        assert cli.main(["demo", "--model", str(tiny_model), "--output-dir", str(out), "--quiet"] + extra) == 0
        steps = json.loads((out / "run.json").read_text())["guidance"]
        assert len(steps) > 3
        assert [not s["reused"] for s in steps] == [i % every == 0 for i in range(len(steps))], name
