"""`motiontransfer batch JOBS.yaml`: many (video, prompts, options) jobs, here one after another or as Ray tasks.

    motiontransfer batch jobs.yaml --output-dir runs/batch --steps 25          # here
    motiontransfer batch jobs.yaml --output-dir runs/batch --ray local         # a Ray cluster on this machine
    motiontransfer batch jobs.yaml --output-dir /shared/runs --ray auto        # the cluster `ray start` joined

Jobs file (YAML; video paths relative to it):

    options: {steps: 25}            # optional: TransferConfig fields for every job
    tracker: flow                   # optional: the motion-fidelity tracker (flow, the default; lk; cotracker)
    jobs:
      - name: car                   # optional; default job-NN
        video: clips/car.mp4
        prompts: [a red bike on a road, a horse on a road]      # or  prompt: a red bike on a road
        options: {seed: 0, source_prompt: a car on a road}      # optional: this job's own options

Options, later wins: the file's `options`, those given on the command line, the job's own. A job's prompts
share one inversion (`transfer_many`); its results go to `OUTPUT/<job>/` (one folder per prompt when it has
several), each scored against its source (`evaluation.selfcheck.check_result`: the scorer and defaults of
every front end, recorded in the result's run.json too), and `OUTPUT/<job>/job.json` is written last: a job
with it is done and is skipped by the next run (resumable). A failed job is reported and the others go on; a
next run tries it again. After every job, `summary.csv` and `summary.md` list per job and prompt the status, the
seconds, the scores and the result's folder; a score that could not be measured is empty, with the reason in
`score_note`, and summary.md ends with the mean score over the measured results and how many were not.

With Ray the job function is the same (`run_job`), one task per job with one GPU each when the cluster has
GPUs (else one CPU each); the output folder and the videos must be on a file system every node sees.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .config import read_small_text, short
from .errors import ConfigError, MotionTransferError

logger = logging.getLogger(__name__)

SUMMARY_COLUMNS = ("job", "prompt", "status", "seconds", "motion_fidelity", "motion_fidelity_one_sided", "seed",
                   "output", "score_note", "error")


@dataclass(frozen=True)
class Job:
    name: str
    video: str                                   # absolute path
    prompts: tuple[str, ...]
    options: dict[str, Any] = field(default_factory=dict)     # this job's TransferConfig fields, resolved
    tracker: str | None = None                   # the motion-fidelity tracker; None: the default of every front end


def load_jobs(path: str | Path, options: dict | None = None) -> list[Job]:
    """Reads a jobs file; `options` (the command line's) go over the file's and under each job's own."""
    path = Path(path)
    try:
        spec = yaml.safe_load(read_small_text(path, MAX_JOBS_BYTES, "jobs file"))
    except yaml.YAMLError as e:
        raise ConfigError(f"jobs file {path} is not valid YAML: {short(str(e))}") from None
    if isinstance(spec, list):
        spec = {"jobs": spec}
    if not isinstance(spec, dict) or not isinstance(spec.get("jobs"), list) or not spec["jobs"]:
        raise ConfigError(f"jobs file {path} needs a list of jobs (`jobs:`), each with a video and prompts")
    unknown = set(spec) - {"jobs", "options", "tracker"}
    if unknown:
        raise ConfigError(f"unknown key(s) in {path}: {short(', '.join(sorted(map(str, unknown))))}")
    if len(spec["jobs"]) > MAX_JOBS:
        raise ConfigError(f"jobs file {path} lists {len(spec['jobs'])} jobs; at most {MAX_JOBS} per file")
    _need_options(spec.get("options"), f"options of {path}")
    tracker = spec.get("tracker")                # None: the scorer's default
    if tracker is not None and not isinstance(tracker, str):
        raise ConfigError(f"tracker in {path} must be a name, got {short(tracker)}")
    shared = {**(spec.get("options") or {}), **(options or {})}
    jobs, names = [], set()
    for i, j in enumerate(spec["jobs"]):
        if not isinstance(j, dict):
            raise ConfigError(f"job {i} in {path} must be a mapping with video and prompts")
        unknown = set(j) - {"name", "video", "prompt", "prompts", "options"}
        if unknown:
            raise ConfigError(f"unknown key(s) in job {i} of {path}: {short(', '.join(sorted(map(str, unknown))))}")
        name = j.get("name", f"job-{i:02d}")
        if not isinstance(name, (str, int)) or isinstance(name, bool):
            raise ConfigError(f"job {i} in {path}: name must be text, got {short(name)}")
        name = str(name)
        if name in names or not NAME.fullmatch(name) or name in (".", ".."):
            raise ConfigError(f"job name {short(name)} in {path} is repeated or not a folder name (letters, digits, "
                              f"'.', '-', '_'; at most 100)")
        names.add(name)
        prompts = j.get("prompts", [j["prompt"]] if "prompt" in j else [])
        prompts = [prompts] if isinstance(prompts, str) else prompts
        if not isinstance(prompts, list) or not all(isinstance(p, str) for p in prompts) or len(prompts) > MAX_PROMPTS:
            raise ConfigError(f"job {name} in {path}: prompts must be a list of at most {MAX_PROMPTS} texts, got "
                              f"{short(prompts)}")
        if not isinstance(j.get("video"), str) or not prompts:
            raise ConfigError(f"job {name} in {path} needs a video (a path) and at least one prompt")
        _need_options(j.get("options"), f"job {name} in {path}")
        jobs.append(Job(name=name, video=str((path.parent / j["video"]).resolve()), prompts=tuple(prompts),
                        options={**shared, **(j.get("options") or {})}, tracker=tracker))
    return jobs


MAX_JOBS_BYTES = 1_000_000        # a jobs file of thousands of jobs is well under this
MAX_JOBS, MAX_PROMPTS = 10_000, 100
NAME = re.compile(r"[A-Za-z0-9._-]{1,100}")
JOB_RUN_KEYS = ("output_dir", "overwrite", "quiet")   # the batch decides these: where each job goes, and that it


def _need_options(options, where: str) -> None:      # replaces its own unfinished folders
    """Options of a jobs file: a mapping of TransferConfig fields (checked by the transfer), not the run's own."""
    if options is None:
        return
    if not isinstance(options, dict):
        raise ConfigError(f"options of {where} must be a mapping of option: value, got {short(options)}")
    taken = sorted(set(map(str, options)) & set(JOB_RUN_KEYS))
    if taken:
        raise ConfigError(f"{where} sets {', '.join(taken)}, which the batch decides (--output-dir; results are "
                          f"never overwritten, an unfinished job is redone)")


def run_job(job: Job, output_dir: str | Path, quiet: bool = True) -> dict:
    """One job: its prompts through `transfer_many` (one inversion), each result scored; writes job.json last
    and returns it. Runs the same here and in a Ray worker."""
    from .evaluation.metrics import score_videos
    from .evaluation.selfcheck import LOW_SCORE, check_result
    from .pipeline import transfer_many

    directory = Path(output_dir) / job.name
    start = time.perf_counter()
    # an unfinished job's folders are this batch's own: they are replaced
    results = transfer_many(job.video, list(job.prompts), output_dir=directory, overwrite=True, quiet=quiet,
                            **job.options)
    rows = []
    for r in results:
        scores = check_result(r) if job.tracker is None else score_videos(r.source, r.frames, tracker=job.tracker)
        rows.append({"prompt": r.prompt, "seconds": round(sum(r.timings.values()), 3), "seed": r.seed,
                     "motion_fidelity": scores["motion_fidelity"],
                     "motion_fidelity_one_sided": scores["motion_fidelity_one_sided"],
                     "score_note": scores["reason"] or (f"low (below {LOW_SCORE:g}): the motion was not kept"
                                                        if scores["motion_fidelity"] < LOW_SCORE else None),
                     "output": str(r.output_dir)})
    record = {"job": job.name, "video": job.video, "status": "done", "options": job.options,
              "seconds": round(time.perf_counter() - start, 3), "results": rows}
    from .video import atomic_write_text

    atomic_write_text(directory / "job.json", json.dumps(record, indent=2, default=str))
    return record


def _run_job_task(args: tuple[Job, str, bool]) -> dict:
    """`run_job` on one tuple: the function Ray runs (module level, so workers import it)."""
    return run_job(*args)


def run_batch(jobs_file: str | Path, output_dir: str | Path, *, options: dict | None = None, quiet: bool = True,
              ray_address: str | None = None, num_gpus: float | None = None,
              ray_init: dict | None = None) -> list[dict]:
    """Runs every job of `jobs_file` not yet done in `output_dir`, here or (`ray_address`) as Ray tasks, and
    writes summary.csv / summary.md. Returns one record per job (status done, skipped or failed)."""
    from .engine import run_tasks

    from .video import folder_lock

    jobs = load_jobs(jobs_file, options)
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    with folder_lock(out):               # one batch a folder: a second one stops at once, in one line
        records: dict[str, dict] = {}
        todo = []
        for job in jobs:
            done = _done(out, job)
            if done is not None:
                records[job.name] = {**done, "status": "skipped"}
                logger.info("%s: done before, skipped", job.name)
            else:
                todo.append(job)
        write_summary(out, [records[j.name] for j in jobs if j.name in records])
        for (job, _, _), outcome in run_tasks(_run_job_task, [(j, str(out), quiet) for j in todo],
                                              ray_address=ray_address, num_gpus=num_gpus, ray_init=ray_init):
            if isinstance(outcome, BaseException):
                message = str(outcome) if isinstance(outcome, MotionTransferError) else \
                    f"{type(outcome).__name__}: {outcome}"
                records[job.name] = {"job": job.name, "video": job.video, "status": "failed",
                                     "error": message.strip().splitlines()[-1] if message.strip() else message,
                                     "results": [{"prompt": p} for p in job.prompts]}
                logger.warning("%s failed: %s", job.name, records[job.name]["error"])
            else:
                records[job.name] = outcome
                logger.info("%s done in %.1f s", job.name, outcome["seconds"])
            for name, rec in records.items():      # what the folder holds wins: a job done on disk is done
                on_disk = _done(out, name)
                if on_disk is not None and rec["status"] != "skipped":
                    records[name] = on_disk
            write_summary(out, [records[j.name] for j in jobs if j.name in records])
    return [records[j.name] for j in jobs]


def _done(out: Path, job) -> dict | None:
    """The record of a job (or job name) done in `out`: its job.json, when it is there and whole."""
    path = out / getattr(job, "name", job) / "job.json"
    try:
        record = json.loads(path.read_text()) if path.is_file() else None
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and record.get("status") == "done" else None


def summary_rows(records: list[dict]) -> list[dict]:
    """One row per job and prompt, with the SUMMARY_COLUMNS."""
    rows = []
    for rec in records:
        for r in rec.get("results") or [{}]:
            row = {"job": rec["job"], "status": rec["status"], "error": rec.get("error", ""), **r}
            rows.append({c: _cell(row.get(c)) for c in SUMMARY_COLUMNS})
    return rows


def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def write_summary(out: Path, records: list[dict]) -> None:
    from .video import atomic_write_text

    rows = summary_rows(records)
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=SUMMARY_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(out / "summary.csv", text.getvalue())
    lines = ["| " + " | ".join(SUMMARY_COLUMNS) + " |", "|" + "---|" * len(SUMMARY_COLUMNS)]
    lines += ["| " + " | ".join(r[c].replace("|", "\\|") for c in SUMMARY_COLUMNS) + " |" for r in rows]
    lines += ["", mean_line(records)]
    atomic_write_text(out / "summary.md", "\n".join(lines) + "\n")


def mean_line(records: list[dict]) -> str:
    """"motion fidelity: mean 0.62 over 5 results; 1 not measured" over the done and skipped jobs' results."""
    results = [r for rec in records if rec["status"] != "failed" for r in rec.get("results") or []]
    scores = [r["motion_fidelity"] for r in results if r.get("motion_fidelity") is not None]
    mean = f"mean {sum(scores) / len(scores):.3f} over {len(scores)} results" if scores else "no result measured"
    return f"motion fidelity: {mean}; {len(results) - len(scores)} not measured"


__all__ = ["Job", "load_jobs", "run_job", "run_batch", "summary_rows", "write_summary"]
