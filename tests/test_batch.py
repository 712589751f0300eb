"""Batch jobs: one result per job, resumable, failures reported; the same outputs as Ray tasks on a local cluster."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import numpy as np
import pytest
import yaml

from motiontransfer.batch import load_jobs, run_batch
from motiontransfer.errors import ConfigError
from motiontransfer.video import read_video, write_video

from conftest import moving_square


@pytest.fixture()
def jobs_file(tmp_path, tiny_model) -> Path:
    clips = tmp_path / "clips"
    clips.mkdir()
    write_video(clips / "red.mp4", moving_square(), 8.0)
    write_video(clips / "blue.mp4", moving_square(colour=(0, 0, 255)), 8.0)
    spec = {"options": {"model": str(tiny_model), "cache_dir": str(tmp_path / "cache"), "seed": 0, "steps": 5},
            "jobs": [{"name": "red", "video": "clips/red.mp4", "prompts": ["a green star", "a blue circle"]},
                     {"name": "blue", "video": "clips/blue.mp4", "prompt": "a red star", "options": {"steps": 2}},
                     {"name": "missing", "video": "clips/none.mp4", "prompt": "a red star"}]}
    path = tmp_path / "jobs.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def test_options_file_then_command_line_then_job(jobs_file):
    jobs = load_jobs(jobs_file, {"steps": 3, "seed": 7})
    assert [j.name for j in jobs] == ["red", "blue", "missing"]
    assert jobs[0].options["steps"] == 3 and jobs[0].options["seed"] == 7       # the command line over the file
    assert jobs[1].options["steps"] == 2 and jobs[1].prompts == ("a red star",)  # the job's own wins
    assert Path(jobs[0].video).is_absolute()


@pytest.mark.parametrize("text, message", [("jobs: []", "needs a list"), ("jobs: [{video: a.mp4}]", "prompt"),
                                           ("jobs: [{video: a.mp4, prompt: x, speed: 2}]", "unknown key"),
                                           ("[{name: a, video: a.mp4, prompt: x}, {name: a, video: b.mp4, "
                                            "prompt: y}]", "repeated")])
def test_bad_jobs_files_are_errors(tmp_path, text, message):
    (tmp_path / "jobs.yaml").write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_jobs(tmp_path / "jobs.yaml")


def summary(out: Path) -> list[dict]:
    with open(out / "summary.csv") as f:
        return list(csv.DictReader(f))


def test_batch_runs_every_job_reports_failures_and_resumes(jobs_file, tmp_path):
    out = tmp_path / "out"
    records = run_batch(jobs_file, out)
    assert [r["status"] for r in records] == ["done", "done", "failed"]
    assert "none.mp4 does not exist" in records[2]["error"]
    for name, prompts in (("red", 2), ("blue", 1)):
        record = json.loads((out / name / "job.json").read_text())
        assert len(record["results"]) == prompts
        assert all((Path(r["output"]) / "result.mp4").exists() for r in record["results"])
    assert json.loads((out / "blue" / "run.json").read_text())["config"]["steps"] == 2
    rows = summary(out)
    assert [(r["job"], r["status"]) for r in rows] == [("red", "done"), ("red", "done"), ("blue", "done"),
                                                     ("missing", "failed")]
    # a score, or (a tiny random model's noise) an empty cell with the reason beside it
    assert all((r["motion_fidelity"] == "" and "not measured" in r["score_note"])
               or -1 <= float(r["motion_fidelity"]) <= 1 for r in rows[:3])
    assert all(float(r["seconds"]) > 0 for r in rows[:3])
    text = (out / "summary.md").read_text()
    measured = sum(r["motion_fidelity"] != "" for r in rows[:3])
    assert "| red | a green star | done |" in text and f"{3 - measured} not measured" in text.splitlines()[-1]

    # an interrupted job: its results written, its job.json not; the next run redoes it and skips the rest
    (out / "blue" / "job.json").unlink()
    before = (out / "red" / "job.json").stat().st_mtime_ns
    records = run_batch(jobs_file, out)
    assert [r["status"] for r in records] == ["skipped", "done", "failed"]
    assert (out / "red" / "job.json").stat().st_mtime_ns == before
    assert [r["status"] for r in summary(out)] == ["skipped", "skipped", "done", "failed"]


def test_batch_command(jobs_file, tmp_path, capsys):
    from motiontransfer.cli import main

    code = main(["batch", str(jobs_file), "--output-dir", str(tmp_path / "out"), "--steps", "3", "--quiet"])
    assert code == 1                                              # one job failed
    assert "2 done, 0 skipped (done before), 1 failed" in capsys.readouterr().out
    assert json.loads((tmp_path / "out" / "red" / "a-green-star" / "run.json").read_text())["config"]["steps"] == 3


def test_ray_tasks_on_a_local_cluster_give_the_same_outputs(jobs_file, tmp_path):
    ray = pytest.importorskip("ray")
    local = run_batch(jobs_file, tmp_path / "local")
    # one small local cluster for both runs (run_batch joins a running one and leaves it running)
    ray.init(num_cpus=1, object_store_memory=80 * 2**20, include_dashboard=False, log_to_driver=False)
    try:
        on_ray = run_batch(jobs_file, tmp_path / "ray", ray_address="local")
        assert [r["status"] for r in on_ray] == ["done", "done", "failed"]
        assert "none.mp4 does not exist" in on_ray[2]["error"]
        for a, b in zip(local[:2], on_ray[:2]):
            for ra, rb in zip(a["results"], b["results"]):
                assert ra["prompt"] == rb["prompt"] and ra["motion_fidelity"] == rb["motion_fidelity"]
                frames_a = read_video(Path(ra["output"]) / "frames").frames
                frames_b = read_video(Path(rb["output"]) / "frames").frames
                assert np.array_equal(frames_a, frames_b)          # the same job function, bit for bit on the CPU
        # and it resumes the same way
        again = run_batch(jobs_file, tmp_path / "ray", ray_address="local")
        assert [r["status"] for r in again] == ["skipped", "skipped", "failed"]
        assert ray.is_initialized()
    finally:
        ray.shutdown()


@pytest.mark.parametrize("content, message", [
    (b"\xcc\xdd binary", "not text"), (None, "is a folder"),
    ("jobs: [{name: x, video: a.mp4, prompts: 5}]", "prompts must be a list"),
    ("jobs: [{name: x, video: a.mp4, prompt: p, options: [1, 2]}]", "must be a mapping"),
    ("jobs: [{name: " + "n" * 300 + ", video: a.mp4, prompt: p}]", "not a folder name"),
    ("jobs: [{name: \"a\\0b\", video: a.mp4, prompt: p}]", "not a folder name"),
    ("jobs: [{name: x, video: a.mp4, prompt: p, options: {output_dir: /tmp, overwrite: true}}]", "the batch decides"),
    ("options: {quiet: true}\njobs: [{name: x, video: a.mp4, prompt: p}]", "the batch decides"),
    ("tracker: {a: 1}\njobs: [{name: x, video: a.mp4, prompt: p}]", "tracker in"),
    ("a: &a [x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\n"
     "c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]\nd: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]\n"
     "jobs: [{name: x, video: a.mp4, prompts: *d}]", "unknown key"),
    ("jobs: [{name: x, video: a.mp4, prompts: [[[*a]]]}]\na: &a [1]", "not valid YAML|prompts must be"),
])
def test_hostile_jobs_files_are_one_line(tmp_path, content, message):
    path = tmp_path / "jobs.yaml"
    if content is None:
        path.mkdir()
    elif isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    with pytest.raises(ConfigError, match=message):
        load_jobs(path)


def test_a_second_batch_on_the_same_folder_stops_at_once(jobs_file, tmp_path):
    from motiontransfer.errors import OutputError
    from motiontransfer.video import folder_lock

    out = tmp_path / "out"
    out.mkdir()
    with folder_lock(out):                               # as a first batch holds it
        with pytest.raises(OutputError, match="another run"):
            run_batch(jobs_file, out)
