"""The command line, in process (`cli.main`) and once through the installed console script.

Every run uses the tiny random checkpoint, 4 frames of 32x32, a few DDIM steps and a cache under tmp_path.
"""

import dataclasses
import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from motiontransfer import cli, pipeline
from motiontransfer.errors import ConfigError, ModelError
from motiontransfer.video import write_video

from conftest import moving_square

FAST = ["--steps", "4", "--iterations", "2", "--seed", "0", "--quiet"]


def run(capsys, *argv) -> tuple[int, str, str]:
    code = cli.main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_user_error(code: int, err: str, *fragments: str) -> str:
    """One line on stderr, starting with "error:", no traceback, non-zero status; returns the line."""
    assert code != 0
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error:"), err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


def frame_bytes(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((directory / "frames").glob("*.png"))}


# ------------------------------------------------------------------------------------------------- transfer

def test_transfer_writes_result_comparison_frames_and_run_record(tiny_model, source, tmp_path, capsys):
    out, cache = tmp_path / "out", tmp_path / "cache"
    code, stdout, _ = run(capsys, "transfer", source, "--prompt", "a green star", "--model", tiny_model,
                          "--steps", "4", "--seed", "0", "--output-dir", out, "--quiet", "--cache-dir", cache)
    assert code == 0
    assert f"{out}/result.mp4" in stdout and "seed 0" in stdout
    for name in ("result.mp4", "comparison.mp4", "run.json"):
        assert (out / name).stat().st_size > 0
    frames = sorted((out / "frames").glob("*.png"))
    assert [p.name for p in frames] == ["0000.png", "0001.png", "0002.png", "0003.png"]
    assert np.asarray(Image.open(frames[0])).shape == (32, 32, 3)
    with av.open(str(out / "result.mp4")) as container:
        assert len(list(container.decode(video=0))) == 4

    record = json.loads((out / "run.json").read_text())
    assert record["seed"] == 0 and record["prompt"] == "a green star"
    check = record["self_check"]                                   # the self-check, printed and recorded
    assert f"motion fidelity against the source: {check['motion_fidelity']:.2f}" in stdout or \
        (check["motion_fidelity"] is None and "not measured" in stdout)
    assert record["config"]["seed"] == 0 and record["config"]["steps"] == 4
    assert record["config"]["frames"] == 4 and record["config"]["width"] == 32
    assert record["config"]["cache_dir"] == str(cache)
    assert record["versions"]["torch"] == torch.__version__ and "diffusers" in record["versions"]
    assert record["model"]["path"] == str(tiny_model) and len(record["model"]["identity"]) == 16
    assert {"load", "inversion", "sampling", "decode"} <= set(record["timings_s"])
    assert record["inversion_cached"] is False
    # 4 steps with the default window (0, 0.4): the first two timesteps are guided; the first is optimised with
    # 10 Adam steps, the second reuses its change (--reuse-every 3)
    first, second = record["guidance"]
    assert isinstance(first["loss_before"], float) and isinstance(first["loss_after"], float)
    assert len(first["losses"]) == first["iterations"] == 10 and not first["reused"]
    assert first["loss_before"] == first["losses"][0] and first["loss_after"] < first["losses"][0]
    assert second["reused"] and second["iterations"] == 0 and second["losses"] == []
    assert list(cache.glob("*.safetensors")), "the inversion was not cached"


def test_same_seed_gives_identical_frames_and_no_overwrite_refuses(tiny_model, source, tmp_path, capsys):
    first, second = tmp_path / "first", tmp_path / "second"
    common = ["--prompt", "a blue circle", "--model", tiny_model, "--cache-dir", tmp_path / "cache", *FAST]
    assert run(capsys, "transfer", source, *common, "--output-dir", first)[0] == 0
    assert run(capsys, "transfer", source, *common, "--output-dir", second, "--overwrite")[0] == 0
    assert frame_bytes(first) == frame_bytes(second) and len(frame_bytes(first)) == 4

    before = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in first.rglob("*") if p.is_file()}
    code, _, err = run(capsys, "transfer", source, *common, "--output-dir", first)
    assert_user_error(code, err, "--overwrite")
    after = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in first.rglob("*") if p.is_file()}
    assert after == before


def test_second_prompt_reuses_the_cached_inversion(tiny_model, source, tmp_path, capsys, caplog):
    common = ["--model", tiny_model, "--cache-dir", tmp_path / "cache", *FAST]
    assert run(capsys, "transfer", source, "--prompt", "a red star", *common, "--output-dir", tmp_path / "a")[0] == 0
    caplog.set_level(logging.INFO, logger="motiontransfer")
    caplog.clear()
    assert run(capsys, "transfer", source, "--prompt", "a blue square", *common, "--output-dir", tmp_path / "b")[0] == 0
    assert "reusing the cached inversion" in caplog.text
    assert json.loads((tmp_path / "a" / "run.json").read_text())["inversion_cached"] is False
    record = json.loads((tmp_path / "b" / "run.json").read_text())
    assert record["inversion_cached"] is True and "inversion" not in record["timings_s"]
    assert len(list((tmp_path / "cache").glob("*.safetensors"))) == 1


def test_several_prompts_share_one_inversion(tiny_model, source, tmp_path, capsys, monkeypatch):
    calls = []
    real = pipeline.invert_latent
    monkeypatch.setattr(pipeline, "invert_latent", lambda *a, **k: calls.append(1) or real(*a, **k))
    out = tmp_path / "out"
    code, stdout, _ = run(capsys, "transfer", source, "--prompt", "a red star", "--prompt", "a blue circle",
                          "--model", tiny_model, "--cache-dir", tmp_path / "cache", "--output-dir", out, *FAST)
    assert code == 0
    assert len(calls) == 1
    assert sorted(p.name for p in out.iterdir()) == ["a-blue-circle", "a-red-star"]
    prompts = set()
    for sub in out.iterdir():
        record = json.loads((sub / "run.json").read_text())
        prompts.add(record["prompt"])
        assert len(frame_bytes(sub)) == 4 and (sub / "result.mp4").exists()
    assert prompts == {"a red star", "a blue circle"}
    assert frame_bytes(out / "a-red-star") != frame_bytes(out / "a-blue-circle")
    lines = stdout.strip().splitlines()
    assert len(lines) == 4 and all("result.mp4" in line for line in lines[::2])
    assert all(line.startswith("motion fidelity against the source: ") for line in lines[1::2])   # the self-check


def test_several_prompts_do_not_double_count_in_their_records(tiny_model, source, tmp_path, capsys):
    out = tmp_path / "out"
    assert run(capsys, "transfer", source, "--prompt", "a red star", "--prompt", "a blue circle", "--model",
               tiny_model, "--cache-dir", tmp_path / "cache", "--output-dir", out, *FAST)[0] == 0
    records = [json.loads((sub / "run.json").read_text()) for sub in sorted(out.iterdir())]
    # what was run in all: 4 inversion steps, then per prompt 4 DDIM steps of one CFG pass (counted as 2)
    assert sum(r["counts"]["unet_forward"] for r in records) == 4 + 2 * 4 * 2


# --------------------------------------------------------------------------------------------- invert, analyze

def test_invert_fills_the_cache_then_hits_it(tiny_model, source, tmp_path, capsys):
    cache = tmp_path / "cache"
    argv = ["invert", source, "--model", tiny_model, "--steps", "4", "--cache-dir", cache, "--quiet"]
    code, out, _ = run(capsys, *argv)
    assert code == 0 and out.startswith("inverted: ")
    path = Path(out.strip().removeprefix("inverted: "))
    assert path.parent == cache and path.is_file()
    code, out, _ = run(capsys, *argv)
    assert code == 0 and out.strip() == f"cache hit: {path}"


def test_analyze_writes_one_result_per_seed(tiny_model, source, tmp_path, capsys):
    out = tmp_path / "analysis"
    code, stdout, _ = run(capsys, "analyze", source, "--target", "smm", "--seeds", "2", "--model", tiny_model,
                          "--steps", "4", "--iterations", "2", "--cache-dir", tmp_path / "cache",
                          "--output-dir", out, "--quiet")
    assert code == 0
    assert sorted(p.name for p in out.iterdir()) == ["seed-0", "seed-1"]
    for seed in (0, 1):
        record = json.loads((out / f"seed-{seed}" / "run.json").read_text())
        assert record["seed"] == seed and record["analysis"] == "smm"
        assert record["config"]["loss"] == "smm" and record["config"]["init"] == "random"
    # random initialisation: two seeds give two different videos
    assert frame_bytes(out / "seed-0") != frame_bytes(out / "seed-1")
    assert len(stdout.strip().splitlines()) == 2


def test_env_prints_versions_and_device_as_json(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    code, out, _ = run(capsys, "env")
    assert code == 0
    info = json.loads(out)
    assert info["inversion_cache"] == str(tmp_path / "motiontransfer" / "inversions")
    assert info["torch"] == torch.__version__
    assert info["device"] in ("cpu", "cuda", "mps")
    assert info["cuda"] is torch.cuda.is_available()


def test_console_script_runs_a_transfer(tiny_model, source, tmp_path):
    script = Path(sys.executable).parent / "motiontransfer"
    if not script.exists():
        script = shutil.which("motiontransfer")
    assert script, "the motiontransfer console script is not installed"
    out = tmp_path / "out"
    env = os.environ | {"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([str(script), "transfer", str(source), "--prompt", "a green star", "--model",
                           str(tiny_model), "--cache-dir", str(tmp_path / "cache"), "--output-dir", str(out),
                           *FAST], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().startswith(f"{out}/result.mp4")
    assert (out / "run.json").exists() and len(list((out / "frames").glob("*.png"))) == 4
    # and a user error through the real process: status 2, one line, no traceback
    done = subprocess.run([str(script), "transfer", str(source), "--prompt", "", "--quiet"],
                          capture_output=True, text=True, env=env, timeout=120)
    assert_user_error(done.returncode, done.stderr, "prompt is empty")
    assert done.returncode == 2


# ------------------------------------------------------------------------------------------ a light front end

LIGHT = """
import sys
from motiontransfer import cli
try:
    cli.main(sys.argv[1:])
except SystemExit as e:
    code = e.code
heavy = sorted(m for m in ("torch", "diffusers", "transformers", "cv2", "av", "gradio", "ray") if m in sys.modules)
print(code, heavy)
"""


@pytest.mark.parametrize("argv", [["--help"], ["transfer", "--help"], ["train", "--help"], ["ui", "--help"],
                                  ["batch", "--help"],
                                  ["transfer", "clip.mp4"], ["transfer", "clip.mp4", "--prompt", "x", "--resize", "no"],
                                  ["nonsense"]])
def test_help_and_argument_errors_import_no_torch(argv):
    env = os.environ | {"PYTHONPATH": os.pathsep.join(sys.path)}
    done = subprocess.run([sys.executable, "-c", LIGHT, *argv], capture_output=True, text=True, env=env, timeout=60)
    code, heavy = done.stdout.strip().splitlines()[-1].split(" ", 1)
    assert code == ("0" if "--help" in argv else "2"), done.stderr
    assert heavy == "[]"


def test_import_motiontransfer_is_light_and_its_names_load_on_use():
    code = ("import sys, motiontransfer; light = 'torch' not in sys.modules; "
            "f = motiontransfer.transfer; print(light, 'torch' in sys.modules, f.__module__)")
    env = os.environ | {"PYTHONPATH": os.pathsep.join(sys.path)}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert done.stdout.split() == ["True", "True", "motiontransfer.pipeline"], done.stderr


def test_reference_switches_are_flags():
    args = cli.build_parser().parse_args(["transfer", "v.mp4", "--prompt", "p", "--lf-filter", "reference",
                                          "--vae-encode", "sample"])
    assert cli._method_options(args) == {"lf_filter": "reference", "vae_encode": "sample"}


def test_choices_come_from_the_config():
    from motiontransfer import config

    actions = {a.dest: a for a in cli.build_parser()._subparsers._group_actions[0].choices["transfer"]._actions}
    assert tuple(actions["resize"].choices) == config.RESIZE_POLICIES
    assert tuple(actions["activations"].choices) == config.ACTIVATIONS
    assert tuple(actions["preset"].choices) == tuple(config.PRESETS)
    assert tuple(actions["lf_filter"].choices) == config.LF_FILTERS
    assert tuple(actions["vae_encode"].choices) == config.VAE_ENCODINGS
    assert tuple(actions["quantize"].choices) == config.QUANTIZATIONS
    flags = {a.dest for a in actions.values()}
    assert {f.name for f in dataclasses.fields(config.TransferConfig)} <= flags


# ---------------------------------------------------------------------------------------------- user errors

def test_corrupt_video_is_one_line(tiny_model, tmp_path, capsys):
    video = tmp_path / "noise.mp4"
    video.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    code, _, err = run(capsys, "transfer", video, "--prompt", "a star", "--model", tiny_model,
                       "--output-dir", tmp_path / "out", "--cache-dir", tmp_path / "cache", *FAST)
    assert_user_error(code, err, "noise.mp4")


def test_text_file_named_mp4_is_one_line(tiny_model, tmp_path, capsys):
    video = tmp_path / "notes.mp4"
    video.write_text("this is not a video\n" * 20)
    code, _, err = run(capsys, "transfer", video, "--prompt", "a star", "--model", tiny_model,
                       "--output-dir", tmp_path / "out", "--cache-dir", tmp_path / "cache", *FAST)
    assert_user_error(code, err, "notes.mp4")


def test_audio_only_file_says_no_video_stream(tiny_model, tmp_path, capsys):
    video = tmp_path / "sound.mp4"
    with av.open(str(video), "w") as container:
        stream = container.add_stream("aac", rate=8000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
        frame.sample_rate = 8000
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            container.mux(packet)
    code, _, err = run(capsys, "transfer", video, "--prompt", "a star", "--model", tiny_model,
                       "--output-dir", tmp_path / "out", "--cache-dir", tmp_path / "cache", *FAST)
    assert_user_error(code, err, "no video stream")


def test_too_few_frames_names_the_counts(tiny_model, source, tmp_path, capsys):
    code, _, err = run(capsys, "transfer", source, "--prompt", "a star", "--model", tiny_model, "--frames", "6",
                       "--output-dir", tmp_path / "out", "--cache-dir", tmp_path / "cache", *FAST)
    line = assert_user_error(code, err, "4", "6")
    assert "frames" in line


def test_empty_prompt(tiny_model, source, tmp_path, capsys):
    code, _, err = run(capsys, "transfer", source, "--prompt", "", "--model", tiny_model,
                       "--output-dir", tmp_path / "out", *FAST)
    assert_user_error(code, err, "prompt")
    assert not (tmp_path / "out").exists()


def test_missing_model_folder(source, tmp_path, capsys):
    missing = tmp_path / "no-such-model"
    code, _, err = run(capsys, "transfer", source, "--prompt", "a star", "--model", missing,
                       "--output-dir", tmp_path / "out", *FAST)
    assert_user_error(code, err, str(missing), "does not exist")


def test_incomplete_model_folder(tiny_model, source, tmp_path, capsys):
    partial = tmp_path / "partial"
    shutil.copytree(tiny_model, partial, ignore=shutil.ignore_patterns("vae"))
    code, _, err = run(capsys, "transfer", source, "--prompt", "a star", "--model", partial,
                       "--output-dir", tmp_path / "out", *FAST)
    assert_user_error(code, err, "incomplete", "vae/")


def test_pickled_weights_need_allow_unsafe_weights(tiny_model, source, tmp_path, capsys):
    pickled = tmp_path / "pickled"
    shutil.copytree(tiny_model, pickled)
    weights = pickled / "unet" / "diffusion_pytorch_model.safetensors"
    torch.save(load_file(weights), pickled / "unet" / "diffusion_pytorch_model.bin")
    weights.unlink()
    common = ["transfer", source, "--prompt", "a star", "--model", pickled, "--cache-dir", tmp_path / "cache",
              *FAST]
    code, _, err = run(capsys, *common, "--output-dir", tmp_path / "refused")
    assert_user_error(code, err, "pickled", "--allow-unsafe-weights")
    assert not (tmp_path / "refused").exists()
    code, _, err = run(capsys, *common, "--output-dir", tmp_path / "accepted", "--allow-unsafe-weights")
    assert code == 0, err
    assert json.loads((tmp_path / "accepted" / "run.json").read_text())["config"]["allow_unsafe_weights"] is True


def test_hub_id_while_offline(source, tmp_path, capsys):
    code, _, err = run(capsys, "transfer", source, "--prompt", "a star", "--model", "nobody/no-such-model",
                       "--output-dir", tmp_path / "out", *FAST)
    assert_user_error(code, err, "nobody/no-such-model", "--model", "--local-dir")


def test_unknown_layer_name(tiny_model, source, tmp_path, capsys):
    code, _, err = run(capsys, "transfer", source, "--prompt", "a star", "--model", tiny_model,
                       "--layers", "up_blocks.9.nope", "--cache-dir", tmp_path / "cache",
                       "--output-dir", tmp_path / "out", *FAST)
    assert_user_error(code, err, "up_blocks.9.nope")


@pytest.mark.parametrize("debug, message", [
    (False, "CUDA out of memory. Tried to allocate 2.00 GiB"), (True, "CUDA out of memory. Tried to allocate 2 GiB"),
    (False, "[enforce fail at alloc_cpu.cpp:121] data. DefaultCPUAllocator: can't allocate memory: you tried to "
            "allocate 68719476736 bytes"),
    (False, "OpenCV(4.10.0) alloc.cpp:73: error: (-4:Insufficient memory) Failed to allocate 17179869184 bytes")])
def test_out_of_memory(tiny_model, source, tmp_path, capsys, monkeypatch, debug, message):
    def oom(*args, **kwargs):
        raise RuntimeError(message)

    monkeypatch.setattr(pipeline, "generate", oom)
    argv = ["transfer", source, "--prompt", "a star", "--model", tiny_model, "--output-dir", tmp_path / "out",
            "--cache-dir", tmp_path / "cache", *FAST]
    if debug:
        with pytest.raises(RuntimeError, match="out of memory|allocate"):
            cli.main([str(a) for a in argv + ["--debug"]])
        return
    code, _, err = run(capsys, *argv)
    line = assert_user_error(code, err, "out of memory", "--frames", "--dtype")
    assert "--width" in line or "resolution" in line


def test_output_dir_under_a_file(tiny_model, source, tmp_path, capsys):
    blocker = tmp_path / "file.txt"
    blocker.write_text("a file, not a folder")
    code, _, err = run(capsys, "transfer", source, "--prompt", "a star", "--model", tiny_model,
                       "--output-dir", blocker / "out", "--cache-dir", tmp_path / "cache", *FAST)
    assert_user_error(code, err, str(blocker / "out"))
    assert blocker.read_text() == "a file, not a folder"


def test_unknown_key_in_config_file(tiny_model, source, tmp_path, capsys):
    config = tmp_path / "run.yaml"
    config.write_text("steps: 4\nguidance_sclae: 7.5\n")
    code, _, err = run(capsys, "transfer", source, "--prompt", "a star", "--model", tiny_model,
                       "--config", config, "--output-dir", tmp_path / "out", *FAST)
    assert_user_error(code, err, "guidance_sclae")


@pytest.mark.parametrize("debug", [False, True])
def test_bad_value(source, tmp_path, capsys, debug):
    argv = ["transfer", source, "--prompt", "a star", "--steps", "0", "--output-dir", tmp_path / "out", "--quiet"]
    if debug:
        with pytest.raises(ConfigError, match="--steps"):
            cli.main([str(a) for a in argv + ["--debug"]])
        return
    code, _, err = run(capsys, *argv)
    assert_user_error(code, err, "--steps", "0")
    assert code == 2


def test_debug_shows_the_model_error(source, tmp_path):
    with pytest.raises(ModelError, match="does not exist"):
        cli.main(["transfer", str(source), "--prompt", "a star", "--model", str(tmp_path / "none"),
                  "--output-dir", str(tmp_path / "out"), "--quiet", "--debug"])


def test_score_prints_two_sided_motion_fidelity_and_writes_json(tmp_path, capsys):
    import dataclasses

    import numpy as np

    from motiontransfer.shapes import world
    from motiontransfer.video import write_video

    clip = world.sample_clip(np.random.default_rng(4), size=64, frames=12, motion="linear")
    clip = world.render(dataclasses.replace(clip.params, spin=0.0), size=64, frames=12)
    write_video(tmp_path / "a.mp4", clip.frames, 8)
    write_video(tmp_path / "b.mp4", clip.frames[::-1].copy(), 8)
    ys, xs = np.nonzero(clip.masks[0])
    box = f"{xs.min() - 2},{ys.min() - 2},{xs.max() + 3},{ys.max() + 3}"
    code, out, _ = run(capsys, "score", tmp_path / "a.mp4", tmp_path / "a.mp4", "--box", box, "--grid", "20",
                       "--tracker", "flow", "--output", tmp_path / "s.json")
    same = json.loads(out)
    assert code == 0 and same["motion_fidelity"] > 0.99 and same["tracker"] == "flow"
    assert json.loads((tmp_path / "s.json").read_text()) == same
    code, out, _ = run(capsys, "score", tmp_path / "a.mp4", tmp_path / "b.mp4", "--box", box, "--grid", "20",
                       "--tracker", "flow")
    assert code == 0 and json.loads(out)["motion_fidelity"] < 0.3
    code, _, err = run(capsys, "score", tmp_path / "a.mp4", tmp_path / "b.mp4", "--tracker", "cotracker")
    assert code != 0 and err.startswith("error:") and len(err.strip().splitlines()) == 1


def test_control_characters_in_messages_are_escaped(tmp_path, capsys):
    name = tmp_path / "\x1b[31mred\x1b[0m.mp4"
    code, _, err = run(capsys, "transfer", name, "--prompt", "a star")
    assert code == 2 and "\x1b" not in err and "\\x1b[31mred" in err


@pytest.mark.parametrize("what", ["missing", "not a video"])
def test_a_bad_input_is_told_before_torch_loads(tmp_path, what):
    """Issue 27, item 13: the first error a newcomer meets comes in a fraction of the libraries' load time."""
    path = tmp_path / "clip.mp4"
    if what == "not a video":
        path.write_text("not a video")
    code = ("import sys\nfrom motiontransfer import cli\nrc = cli.main(sys.argv[1:])\n"
            "print(rc, sorted(m for m in ('torch', 'diffusers', 'transformers') if m in sys.modules))")
    env = os.environ | {"PYTHONPATH": os.pathsep.join(sys.path)}
    for command in ("transfer", "invert", "analyze"):
        argv = [command, str(path)] + (["--prompt", "x"] if command == "transfer" else [])
        done = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, env=env,
                              timeout=60)
        assert done.stdout.strip().splitlines()[-1] == "2 []", done.stderr
        assert ("does not exist" if what == "missing" else "could not be decoded") in done.stderr
