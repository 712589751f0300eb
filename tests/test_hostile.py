"""Hostile or damaged inputs a user can hand over: model folders that overreach or describe absurd sizes,
damaged weights, odd config files. Each is one line on stderr and a non-zero exit, never a traceback, and never
echoes an unbounded input."""

import json
import shutil
from pathlib import Path

import pytest

from motiontransfer import cli

from conftest import moving_square

FAST = ["--steps", "2", "--iterations", "1", "--seed", "0", "--quiet"]


def one_line(capsys, code: int, *fragments: str) -> str:
    err = capsys.readouterr().err.strip()
    assert code not in (0, None) and len(err.splitlines()) == 1 and err.startswith("error:"), err[:2000]
    assert "Traceback" not in err and len(err) < 1000
    for fragment in fragments:
        assert fragment in err, (fragment, err)
    return err


def edit_json(path: Path, **changes) -> None:
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


def test_a_model_may_recommend_method_options_only(tiny_model, source, tmp_path, capsys, caplog):
    model = tmp_path / "model"
    shutil.copytree(tiny_model, model)
    edit_json(model / "motiontransfer.json", method_defaults={
        "iterations": 2, "cache_dir": str(tmp_path / "planted"), "use_cache": False, "allow_unsafe_weights": True,
        "device": "cpu", "seed": 7})
    with caplog.at_level("WARNING"):
        code = cli.main(["transfer", str(source), "--prompt", "a star", "--model", str(model), "--output-dir",
                         str(tmp_path / "out"), "--cache-dir", str(tmp_path / "cache"), "--steps", "2", "--quiet"])
    assert code == 0, capsys.readouterr().err
    config = json.loads((tmp_path / "out" / "run.json").read_text())["config"]
    assert config["iterations"] == 2                                    # a method option: taken
    assert config["cache_dir"] == str(tmp_path / "cache") and config["use_cache"] is True
    assert config["allow_unsafe_weights"] is False and config["seed"] != 7
    assert not (tmp_path / "planted").exists()
    assert "may recommend method options only" in caplog.text and "use_cache" in caplog.text


@pytest.mark.parametrize("component, field, value", [
    ("unet", "sample_size", 100_000),
    ("unet", "block_out_channels", [8192] * 8),
    ("unet", "layers_per_block", 1000),
    ("text_encoder", "hidden_size", 10_000_000),
    ("vae", "block_out_channels", [100_000]),
])
def test_absurd_model_configs_are_refused_before_allocating(tiny_model, source, tmp_path, capsys, component, field,
                                                           value):
    model = tmp_path / "model"
    shutil.copytree(tiny_model, model)
    edit_json(model / component / "config.json", **{field: value})
    if field == "layers_per_block":
        edit_json(model / component / "config.json", block_out_channels=[8192] * 4)
    code = cli.main(["transfer", str(source), "--prompt", "a star", "--model", str(model),
                     "--output-dir", str(tmp_path / "out"), *FAST])
    err = one_line(capsys, code)
    assert field.split("_")[0] in err or "GB of weights" in err


def test_absurd_recommended_size_is_refused(tiny_model, source, tmp_path, capsys):
    model = tmp_path / "model"
    shutil.copytree(tiny_model, model)
    edit_json(model / "motiontransfer.json", width=1_000_000)
    code = cli.main(["transfer", str(source), "--prompt", "a star", "--model", str(model),
                     "--output-dir", str(tmp_path / "out"), *FAST])
    one_line(capsys, code, "width")


def test_a_corrupt_text_encoder_header_is_one_line(tiny_model, source, tmp_path, capsys):
    model = tmp_path / "model"
    shutil.copytree(tiny_model, model)
    weights = next((model / "text_encoder").glob("*.safetensors"))
    weights.write_bytes(b"\xff" * 8 + b"{not json" + b"\x00" * 64)
    code = cli.main(["transfer", str(source), "--prompt", "a star", "--model", str(model),
                     "--output-dir", str(tmp_path / "out"), *FAST])
    one_line(capsys, code, "cannot load the model")


@pytest.mark.parametrize("kind", ["binary", "folder", "alias bomb", "huge"])
def test_odd_config_files_are_one_line_and_never_echo_their_content(tiny_model, source, tmp_path, capsys, kind):
    config = tmp_path / "config.yaml"
    if kind == "binary":
        config.write_bytes(bytes(range(256)) * 4)
    elif kind == "folder":
        config.mkdir()
    elif kind == "alias bomb":         # 9 ** 9 strings once expanded, a few hundred bytes on disk
        levels = ["&a0 [" + ",".join(['"lol"'] * 9) + "]"]
        levels += [f"&a{i} [" + ",".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, 9)]
        config.write_text("guidance_window: [" + ", ".join(levels) + "]\n")
        assert config.stat().st_size < 500
    else:
        config.write_text("steps: 5\n" + "#" * 2_000_000)
    code = cli.main(["transfer", str(source), "--prompt", "a star", "--model", str(tiny_model), "--config",
                     str(config), "--output-dir", str(tmp_path / "out"), *FAST])
    one_line(capsys, code, "config" if kind != "alias bomb" else "")


def test_output_path_that_is_an_existing_file(tiny_model, source, tmp_path, capsys):
    target = tmp_path / "result"
    target.write_text("mine")
    code = cli.main(["transfer", str(source), "--prompt", "a star", "--model", str(tiny_model),
                     "--output-dir", str(target), *FAST])
    one_line(capsys, code, "is a file")
    assert target.read_text() == "mine"


# ------------------------------------------------------------------------------- options that would do nothing

@pytest.mark.parametrize("flags, fragment", [(["--no-cache"], "--no-cache"), (["--iterations", "5"], "iterations"),
                                             (["--seed", "1"], "seed")])
def test_invert_refuses_options_that_would_do_nothing(tiny_model, source, tmp_path, capsys, flags, fragment):
    code = cli.main(["invert", str(source), "--model", str(tiny_model), "--cache-dir", str(tmp_path / "c"),
                     "--quiet", *flags])
    one_line(capsys, code, fragment)
    assert not (tmp_path / "c").exists()


def test_start_and_stride_on_an_array_are_errors(tiny_model, tmp_path):
    import motiontransfer
    from motiontransfer.errors import ConfigError

    with pytest.raises(ConfigError, match="frames\\[start::stride\\]"):
        motiontransfer.transfer(moving_square(8), "a star", output_dir=False, model=str(tiny_model), start=3,
                                stride=2)


def test_fps_on_a_video_file_and_init_on_analyze_are_errors(tiny_model, source, tmp_path, capsys):
    code = cli.main(["transfer", str(source), "--prompt", "a star", "--model", str(tiny_model), "--fps", "12",
                     "--output-dir", str(tmp_path / "out"), *FAST])
    one_line(capsys, code, "--fps")
    code = cli.main(["analyze", str(source), "--model", str(tiny_model), "--init", "lf",
                     "--output-dir", str(tmp_path / "out"), *FAST])
    one_line(capsys, code, "init")
    code = cli.main(["analyze", str(source), "--model", str(tiny_model), "--output-dir", str(tmp_path / "out"),
                     *FAST])                                     # FAST holds --seed, which analyze sets itself
    one_line(capsys, code, "seed")


def test_an_unsupported_extension_is_reported_before_the_model_loads(source, tmp_path, capsys, monkeypatch):
    def no_loading(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr("motiontransfer.pipeline.load_model", no_loading)
    clip = tmp_path / "clip.txt"
    clip.write_text("not a video")
    for argv in (["transfer", str(clip), "--prompt", "a star"], ["invert", str(clip)], ["analyze", str(clip)]):
        code = cli.main(argv + ["--output-dir", str(tmp_path / "out")] * (argv[0] != "invert") + ["--quiet"])
        one_line(capsys, code, "unsupported type")


def test_the_ffmpeg_hint_quotes_the_file_name(tmp_path):
    from motiontransfer.errors import VideoError
    from motiontransfer.video import read_video

    hostile = tmp_path / "x; rm -rf ~ #.mp4"
    hostile.write_bytes(b"\x00" * 100)
    with pytest.raises(VideoError) as error:
        read_video(hostile)
    assert f"ffmpeg -i '{hostile}'" in str(error.value)


def test_demo_does_not_replace_its_folder_without_overwrite(tiny_model, tmp_path, capsys):
    out = tmp_path / "demo"
    argv = ["demo", "--output-dir", str(out), "--quiet"]
    out.mkdir()
    (out / "run.json").write_text(json.dumps({"demo": {}, "prompt": "earlier"}))
    code = cli.main(argv)
    one_line(capsys, code, "--overwrite")
    assert json.loads((out / "run.json").read_text())["prompt"] == "earlier"
