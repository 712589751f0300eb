"""Results are a unit: an exclusive lock per result folder, written whole into a temporary folder and renamed
into place, distinct folder names per prompt; interrupted runs leave nothing that blocks or confuses a rerun."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from motiontransfer import cli
from motiontransfer.errors import ConfigError, OutputError
from motiontransfer.pipeline import check_output_dir, prompt_folder_names, result_folders
from motiontransfer.video import folder_lock, write_video

from conftest import moving_square

SRC = str(Path(__file__).resolve().parents[1] / "src")
ENV = {**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}


def test_prompts_that_would_share_a_folder_get_distinct_names():
    long_a, long_b = "a red star " * 5 + "on black", "a red star " * 5 + "on white"
    names = prompt_folder_names(["A red star", "a red star!", long_a, long_b, "星", "月", "a green star"])
    assert len(set(names)) == len(names)
    assert names[-1] == "a-green-star"                  # plain prompts keep their plain names
    assert all(len(n) <= 49 for n in names) and names[4].startswith("empty-")
    assert prompt_folder_names([long_a])[0] != prompt_folder_names([long_b])[0]
    with pytest.raises(ConfigError, match="more than once"):
        prompt_folder_names(["a red star", "a red star"])


def test_output_dir_states(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputError, match="is a file"):
        check_output_dir(tmp_path / "file", overwrite=True)
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    for overwrite in (False, True):
        with pytest.raises(OutputError, match="no result"):
            check_output_dir(other, overwrite)
    only_temporary = tmp_path / "killed"
    only_temporary.mkdir()
    (only_temporary / ".result.mp4.tmp-123-abcd.mp4").write_bytes(b"half")
    check_output_dir(only_temporary, overwrite=False)       # what a killed run left does not count
    with result_folders([only_temporary], overwrite=False):
        assert not any(only_temporary.iterdir())            # and it is cleaned


HOLD = """
import sys, time
from motiontransfer.video import folder_lock
with folder_lock(sys.argv[1]):
    print("locked", flush=True)
    time.sleep(60)
"""


def hold_lock(path: Path) -> subprocess.Popen:
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(path)], stdout=subprocess.PIPE, text=True, env=ENV)
    assert holder.stdout.readline().strip() == "locked"
    return holder


def test_a_second_run_into_a_locked_folder_fails_at_once_and_a_killed_holder_blocks_nothing(tiny_model, tmp_path,
                                                                                              capsys):
    out = tmp_path / "out"
    holder = hold_lock(out)
    try:
        with pytest.raises(OutputError, match=f"another run \\(pid {holder.pid}\\)"):
            with folder_lock(out):
                pass
        source = tmp_path / "square.mp4"
        write_video(source, moving_square(4, 32), 8.0)
        code = cli.main(["transfer", str(source), "--prompt", "a green star", "--model", str(tiny_model),
                         "--output-dir", str(out), "--quiet"])
        err = capsys.readouterr().err.strip()
        assert code == 2 and len(err.splitlines()) == 1 and "being written by another run" in err
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    with folder_lock(out):                  # the system dropped the killed holder's lock
        pass
    assert not any(p.name.endswith(".lock") for p in tmp_path.iterdir())


COMPLETE = {"run.json", "result.mp4", "comparison.mp4", "frames"}


def assert_whole_or_absent(out: Path, prompt: str) -> bool:
    """The folder is absent, or holds one complete result for `prompt`; returns whether it is there."""
    if not out.exists():
        return False
    assert {p.name for p in out.iterdir()} == COMPLETE, sorted(p.name for p in out.iterdir())
    assert json.loads((out / "run.json").read_text())["prompt"] == prompt
    assert len(list((out / "frames").iterdir())) == 4
    return True


def launch(tiny_model, source: Path, out: Path, prompt: str, *extra: str) -> subprocess.Popen:
    argv = [sys.executable, "-m", "motiontransfer", "transfer", str(source), "--prompt", prompt, "--model",
            str(tiny_model), "--steps", "3", "--iterations", "1", "--seed", "0", "--quiet", "--output-dir", str(out),
            "--cache-dir", str(out.parent / "cache"), *extra]
    return subprocess.Popen(argv, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for(condition, process: subprocess.Popen, timeout: float = 120.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        if condition():
            return True
        time.sleep(0.005)
    return False


@pytest.mark.parametrize("sig, point", [(signal.SIGKILL, "locked"), (signal.SIGKILL, "writing"),
                                        (signal.SIGKILL, "writing-over"), (signal.SIGINT, "writing"),
                                        (signal.SIGINT, "writing-over")])
def test_an_interrupted_run_never_leaves_a_complete_looking_folder(tiny_model, tmp_path, sig, point):
    source = tmp_path / "square.mp4"
    write_video(source, moving_square(4, 32), 8.0)
    out = tmp_path / "out"
    earlier = None
    if point == "writing-over":             # an earlier result is there and being replaced
        first = launch(tiny_model, source, out, "a blue circle")
        assert first.wait(timeout=300) == 0, first.communicate()[1]
        earlier = "a blue circle"
    run = launch(tiny_model, source, out, "a green star", *(["--overwrite"] if earlier else []))
    if point == "locked":
        condition = lambda: (tmp_path / ".out.lock").exists()
    else:
        condition = lambda: any(p.name.startswith(".out.tmp-") for p in tmp_path.iterdir())
    wait_for(condition, run)
    run.send_signal(sig)
    run.wait(timeout=120)
    if sig == signal.SIGINT and run.returncode != 0:
        err = run.stderr.read().strip()
        assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    # whatever the moment: the earlier result, the new one whole, or nothing
    if out.exists():
        assert json.loads((out / "run.json").read_text())["prompt"] in {earlier, "a green star"}
        assert_whole_or_absent(out, json.loads((out / "run.json").read_text())["prompt"])
    # and a rerun is not blocked or confused
    again = launch(tiny_model, source, out, "a green star", "--overwrite")
    assert again.wait(timeout=300) == 0, again.communicate()[1]
    assert assert_whole_or_absent(out, "a green star")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "out", "square.mp4"]


def test_several_prompts_into_one_output_dir_get_one_folder_each(tiny_model, tmp_path):
    import motiontransfer

    prompts = ["A green star", "a green star!"]
    results = motiontransfer.transfer_many(moving_square(), prompts, output_dir=tmp_path / "out", model=str(tiny_model),
                                           steps=2, iterations=1, seed=0, quiet=True,
                                           cache_dir=str(tmp_path / "cache"))
    assert len({r.output_dir for r in results}) == 2
    for r, prompt in zip(results, prompts):
        assert json.loads((r.output_dir / "run.json").read_text())["prompt"] == prompt


def test_default_folders_of_prompts_that_differ_in_case_only_are_distinct():
    from motiontransfer.pipeline import default_output_dir

    prompts = ["A green star", "a green star!"]
    names = prompt_folder_names(prompts)
    dirs = {default_output_dir("clip.mp4", p, n) for p, n in zip(prompts, names)}
    assert len(dirs) == 2 and all(str(d).startswith("outputs/clip-a-green-star-") for d in dirs)
    assert default_output_dir("clip.mp4", "a green star") == Path("outputs/clip-a-green-star")
