"""benchmarks/layer_probe.py: the clips it compares are what its table says they are, and it runs end to end."""

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from motiontransfer.shapes import world
from motiontransfer.shapes.report import transfer_pairs
from motiontransfer.shapes.tracking import object_track

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "layer_probe.py"


@pytest.fixture(scope="module")
def probe():
    spec = importlib.util.spec_from_file_location("layer_probe", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def clips(probe):
    return probe.variant_clips(transfer_pairs(4, 1, 64, 8), 64, 8)


def test_ideal_clip_has_the_source_motion_in_the_target_look(clips):
    pairs = transfer_pairs(4, 1, 64, 8)
    for c, (clip, target) in zip(clips, pairs):
        np.testing.assert_allclose(object_track(c["ideal"]), object_track(clip.frames), atol=1.5)
        colour = np.array(world.COLOURS[target["colour"]], np.uint8)
        assert (c["ideal"] == colour).all(axis=-1).sum(axis=(1, 2)).min() > 10      # the target's colour, every frame
        assert c["prompt"] == target["prompt"]


def test_static_clip_rests_where_the_source_starts(clips):
    for c in clips:
        track = object_track(c["static"])
        assert np.ptp(track, axis=0).max() < 1.0
        assert np.abs(track[0] - object_track(c["source"])[0]).max() < 2.0


def test_shifted_clip_moves_the_object_a_quarter_frame_over_the_same_background(probe):
    params = world.ClipParams(shape="circle", colour="red", background="white", motion="linear", x0=0.3, y0=0.5,
                              dx=0.1, dy=0.0, size0=0.1, texture="gradient", texture_amplitude=16.0)
    clip = world.render(params, 64, 4)
    moved = probe.shift_frames(clip, 64)
    offset = object_track(moved) - object_track(clip.frames)
    np.testing.assert_allclose(offset, np.tile([16.0, 0.0], (4, 1)), atol=0.5)
    background = np.rint(world.background_image(params, 64)).astype(np.uint8)
    covered = (clip.frames != background).any(axis=(0, 3))                    # any pixel the object touches
    untouched = ~(covered | np.roll(covered, 16, axis=1))
    assert np.array_equal(moved[:, untouched], np.broadcast_to(background[untouched], moved[:, untouched].shape))


def test_shift_is_refused_when_the_object_fills_the_frame(probe):
    params = world.ClipParams(shape="square", colour="red", background="white", motion="linear", x0=0.5, y0=0.5,
                              size0=0.6)
    assert probe.shift_frames(world.render(params, 32, 2), 32) is None


def test_probe_runs_on_a_tiny_model_and_reports_every_layer(probe, tiny_model, tmp_path, monkeypatch, capsys):
    out = tmp_path / "probe.json"
    monkeypatch.setattr(sys, "argv", ["layer_probe.py", "--model", str(tiny_model), "--pairs", "2",
                                      "--steps", "10", "--at", "0", "--noise", "lf2", "--json", str(out)])
    probe.main()
    layers = json.loads(out.read_text())["layers"]
    assert "up_blocks.1.temp_convs.1" in layers and len(layers) > 10
    for row in layers.values():
        assert set(row["mean_loss"]) == {"ideal", "shifted", "static", "other"}
        assert all(0.0 <= w <= 1.0 for w in row["ideal_wins"].values())
    assert "the default layers' summed loss by timestep" in capsys.readouterr().out


def test_probe_reads_every_block_of_a_wan_model(probe, tiny_wan, tmp_path, monkeypatch):
    out = tmp_path / "probe.json"
    monkeypatch.setattr(sys, "argv", ["layer_probe.py", "--model", str(tiny_wan), "--pairs", "2", "--steps", "10",
                                      "--at", "0", "3", "--json", str(out)])
    probe.main()
    result = json.loads(out.read_text())
    assert set(result["layers"]) == {"blocks.0", "blocks.1"} and result["layers"]["blocks.1"]["default"]
    assert len(result["default_layers_by_timestep"]) == 2


def test_lit_variants_are_lit_where_the_object_is(probe):
    pairs = transfer_pairs(2, 1, 64, 8)
    unlit = probe.variant_clips(pairs, 64, 8)
    lit = probe.variant_clips(transfer_pairs(2, 1, 64, 8, light=0.4), 64, 8, light=0.4)
    for a, b in zip(unlit, lit):
        for v in ("source", "ideal", "static", "other", "shifted"):
            if a[v] is not None:
                np.testing.assert_array_equal(b[v], world.apply_light(a[v], 0.4))
