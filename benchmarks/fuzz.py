"""Fuzzing harness: mutated inputs of five kinds, each run under a memory cap and a timeout, outcomes classified.

    OMP_NUM_THREADS=1 python benchmarks/fuzz.py [--cases 1000] [--seed 0] [--kinds video config jobs model ui]
        [--json runs/fuzz.json] [--show CLASS]

Kinds (each case is one mutation of a valid input from the corpus below, drawn from `--seed` + its number):

    video   the transfer's input file: truncated, bytes flipped, a header's sizes patched (a GIF's canvas, 6000 to
            65535 px), emptied, text under a video's name, an image folder with a broken or odd-sized frame
    config  a `--config` YAML file: one key set to a hostile value (wrong types, NaN, huge numbers, strings that
            look like booleans, nested containers, an alias bomb, a Python tag, binary bytes, unknown keys)
    jobs    a `batch` jobs file: the same for the jobs-level and per-job keys (prompts, name, video, options)
    model   a copy of the shipped model folder with one JSON field set to a hostile value, a file removed,
            weights replaced by junk, or a config that is a symlink to /dev/zero
    ui      the web UI's handlers (`ui.App.run`, `App.preview`) called with hostile fields (huge, empty or NUL
            prompts, NaN and huge numbers, missing or non-video uploads)

Every case runs in a child forked from a parent that has imported the package and loaded the shipped model (a
fresh process: forking one that runs other threads, such as a test session's, can deadlock the child), with
its address space capped (`RLIMIT_AS`, the parent's plus 3 GiB) and a timeout. Outcomes:

    clean error     exit code 1 or 2 and one line `error: ...` on stderr (UI: a MotionTransferError)
    success         exit 0, and the result checks out (below)
    traceback       an uncaught exception (exit 70 from the child's guard), or more than one line of error
    hang            no exit within the timeout
    memory blow-up  the child's peak resident memory grew by more than 1.5 GiB over the parent's, or it died of
                    a signal (the cap or the kernel's OOM killer)
    wrong success   exit 0 but no `run.json`, a `run.json` that is not strict JSON, frames all of one value, or an
                    option the config or jobs file set that `run.json` does not hold
    lost or mixed   a batch whose `summary.csv` and job records disagree, or a done job without its result

The corpus is made at the start from seeds (world clips of the shapes world, the shipped model): nothing but this
file and the package is needed. The table of a run goes to the README's hardening section.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import resource
import shutil
import signal
import sys
import tempfile
import time
import traceback
from collections import Counter
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml

CLASSES = ("clean error", "success", "traceback", "hang", "memory blow-up", "wrong success", "lost or mixed")
BAD = CLASSES[2:]
KINDS = ("video", "config", "jobs", "model", "ui")
FAST = ["--steps", "2", "--iterations", "1", "--frames", "4", "--quiet", "--seed", "0"]
TIMEOUT_S = 90
GROWTH_LIMIT = 1.5 * 2 ** 30          # bytes of resident memory a case may add over the parent's
CAP = 3 * 2 ** 30                     # address space a case may add over the parent's

HOSTILE = ["no", "false", "yes", "nan", "inf", "-inf", float("nan"), float("inf"), 1e308, -1, 0, 2 ** 64,
           10 ** 4000, 10 ** 40, 1e-300, [], {}, None, True, [1, 2], {"a": 1}, "", " ", "\x00",
           "x" * 5000, "../../etc/passwd", "/dev/zero", "\x1b[31mred\x1b[0m", 3.5, "3", [[[[]]]], "cuda", "meta"]
ALIAS_BOMB = "a: &a [x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\n" \
             "c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]\nd: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]\n" \
             "e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d]\nf: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e]\n" \
             "g: &g [*f, *f, *f, *f, *f, *f, *f, *f, *f]\nh: [*g, *g, *g, *g, *g, *g, *g, *g, *g]\n"


@dataclass
class Case:
    number: int
    kind: str
    mutation: str
    outcome: str = ""
    detail: str = ""
    seconds: float = 0.0
    growth_mb: float = 0.0
    checks: dict = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------------- corpus

def make_corpus(root: Path) -> dict[str, Path]:
    from motiontransfer.models import shipped_model_path
    from motiontransfer.shapes import world
    from motiontransfer.video import write_frames, write_video

    clip = world.sample_clip(np.random.default_rng(30_000), size=32, frames=8)
    paths = {"mp4": root / "clip.mp4", "gif": root / "clip.gif", "avi": root / "clip.avi",
             "folder": root / "frames", "model": shipped_model_path()}
    write_video(paths["mp4"], clip.frames, 8.0)
    write_video(paths["gif"], clip.frames, 8.0)
    import cv2

    writer = cv2.VideoWriter(str(paths["avi"]), cv2.VideoWriter_fourcc(*"MJPG"), 8.0, (32, 32))
    for frame in clip.frames:
        writer.write(frame[..., ::-1])
    writer.release()
    write_frames(paths["folder"], clip.frames)
    return paths


# ------------------------------------------------------------------------------------------------- mutations

def mutate_bytes(data: bytes, rng: np.random.Generator) -> tuple[bytes, str]:
    kind = rng.choice(["truncate", "flip", "zero-head", "empty", "duplicate"])
    data = bytearray(data)
    if kind == "truncate":
        cut = int(rng.integers(0, len(data)))
        return bytes(data[:cut]), f"truncated at {cut} of {len(data)}"
    if kind == "flip":
        n = int(rng.integers(1, 20))
        for i in rng.integers(0, len(data), n):
            data[i] ^= int(rng.integers(1, 256))
        return bytes(data), f"{n} bytes flipped"
    if kind == "zero-head":
        n = int(rng.integers(4, 64))
        data[:n] = bytes(n)
        return bytes(data), f"first {n} bytes zeroed"
    if kind == "empty":
        return b"", "empty"
    return bytes(data) * 2, "doubled"


def video_case(case: Case, rng: np.random.Generator, corpus: dict, work: Path) -> list[str]:
    source = rng.choice(["mp4", "gif", "avi", "folder", "gif-canvas", "text"])
    if source == "gif-canvas":
        data = bytearray(corpus["gif"].read_bytes())
        side = int(rng.choice([6000, 20000, 65535]))
        data[6:10] = side.to_bytes(2, "little") * 2
        path = work / "input.gif"
        path.write_bytes(bytes(data))
        case.mutation = f"gif canvas {side}x{side}"
    elif source == "text":
        path = work / f"input.{rng.choice(['mp4', 'gif', 'avi', 'mkv'])}"
        path.write_text("this is not a video\n" * int(rng.integers(1, 100)))
        case.mutation = f"text as {path.suffix}"
    elif source == "folder":
        path = work / "frames"
        shutil.copytree(corpus["folder"], path)
        files = sorted(path.iterdir())
        victim = files[int(rng.integers(0, len(files)))]
        how = rng.choice(["broken", "odd size", "text", "huge header"])
        if how == "broken":
            victim.write_bytes(mutate_bytes(victim.read_bytes(), rng)[0])
        elif how == "odd size":
            from PIL import Image
            Image.fromarray(np.zeros((int(rng.integers(1, 80)), int(rng.integers(1, 80)), 3), np.uint8)).save(victim)
        elif how == "text":
            victim.write_text("not an image")
        else:
            data = bytearray(victim.read_bytes())
            data[16:24] = (60000).to_bytes(4, "big") * 2            # the PNG IHDR width and height
            victim.write_bytes(bytes(data))
        case.mutation = f"folder, frame {victim.name} {how}"
    else:
        original = corpus[source]
        data, what = mutate_bytes(original.read_bytes(), rng)
        path = work / f"input{original.suffix}"
        path.write_bytes(data)
        case.mutation = f"{source} {what}"
    return ["transfer", str(path), "--prompt", "a red star on a white background", *FAST]


def hostile_value(rng: np.random.Generator):
    return HOSTILE[int(rng.integers(0, len(HOSTILE)))]


def config_case(case: Case, rng: np.random.Generator, corpus: dict, work: Path) -> list[str]:
    from dataclasses import fields

    from motiontransfer.config import TransferConfig

    keys = [f.name for f in fields(TransferConfig)] + ["output_dir", "overwrite", "preset", "unknown_key"]
    path = work / "config.yaml"
    how = rng.choice(["value", "value", "value", "alias bomb", "python tag", "binary", "not a mapping"])
    if how == "value":
        key = keys[int(rng.integers(0, len(keys)))]
        value = hostile_value(rng)
        case.checks = {"key": key, "value": value}
        path.write_text(yaml.safe_dump({key: value}, allow_unicode=True))
        case.mutation = f"{key}: {short(value)}"
    elif how == "alias bomb":
        path.write_text(ALIAS_BOMB.replace("h:", f"{rng.choice(['layers', 'source_prompt', 'steps'])}:"))
        case.mutation = "alias bomb"
    elif how == "python tag":
        path.write_text("steps: !!python/object/apply:os.system ['echo pwned']\n")
        case.mutation = "python tag"
    elif how == "binary":
        path.write_bytes(bytes(rng.integers(0, 256, 200, dtype=np.uint8)))
        case.mutation = "binary bytes"
    else:
        path.write_text("- steps\n- 3\n")
        case.mutation = "a list, not a mapping"
    return ["transfer", str(corpus["mp4"]), "--prompt", "a red star on a white background", "--config", str(path),
            *FAST]


def jobs_case(case: Case, rng: np.random.Generator, corpus: dict, work: Path) -> list[str]:
    spec = {"options": {"seed": 0, "steps": 2, "iterations": 1, "frames": 4},
            "jobs": [{"name": "one", "video": str(corpus["mp4"]), "prompt": "a red star on a white background"},
                     {"name": "two", "video": str(corpus["gif"]), "prompts": ["a blue circle on a black background"]}]}
    path = work / "jobs.yaml"
    how = rng.choice(["job key", "job key", "top key", "option", "alias bomb", "binary", "folder"])
    if how == "job key":
        key = rng.choice(["name", "video", "prompt", "prompts", "options", "tracker", "unknown"])
        spec["jobs"][int(rng.integers(0, 2))][str(key)] = hostile_value(rng)
        case.mutation = f"job {key}"
    elif how == "top key":
        key = str(rng.choice(["options", "jobs", "limits", "unknown"]))
        spec[key] = hostile_value(rng)
        case.mutation = f"top-level {key}"
    elif how == "option":
        key = str(rng.choice(["steps", "guidance_scale", "output_dir", "overwrite", "quiet", "seed", "layers",
                              "learning_rate", "device", "model"]))
        spec["options"][key] = hostile_value(rng)
        case.mutation = f"option {key}: {short(spec['options'][key])}"
    if how in ("job key", "top key", "option"):
        path.write_text(yaml.safe_dump(spec, allow_unicode=True))
    elif how == "alias bomb":
        path.write_text(ALIAS_BOMB + "jobs:\n  - {name: x, video: " + str(corpus["mp4"]) + ", prompts: *g}\n")
        case.mutation = "alias bomb in prompts"
    elif how == "binary":
        path.write_bytes(bytes(rng.integers(0, 256, 300, dtype=np.uint8)))
        case.mutation = "binary jobs file"
    else:
        path.mkdir()
        case.mutation = "a folder as the jobs file"
    case.checks = {"batch": str(work / "out")}
    return ["batch", str(path), "--output-dir", str(work / "out"), "--quiet"]


def model_case(case: Case, rng: np.random.Generator, corpus: dict, work: Path) -> list[str]:
    folder = work / "model"
    shutil.copytree(corpus["model"], folder, symlinks=False)
    jsons = sorted(p for p in folder.rglob("*.json"))
    how = rng.choice(["field", "field", "field", "remove", "junk weights", "device symlink"])
    if how == "field":
        target = jsons[int(rng.integers(0, len(jsons)))]
        data = json.loads(target.read_text())
        key = list(data)[int(rng.integers(0, len(data)))] if data and rng.random() < 0.8 else "method_defaults"
        data[key] = hostile_value(rng)
        target.write_text(json.dumps(data))
        case.mutation = f"{target.relative_to(folder)}: {key} = {short(data[key])}"
    elif how == "remove":
        victim = sorted(p for p in folder.rglob("*") if p.is_file())[int(rng.integers(0, len(jsons)))]
        victim.unlink()
        case.mutation = f"{victim.relative_to(folder)} removed"
    elif how == "junk weights":
        victim = sorted(folder.rglob("*.safetensors"))[int(rng.integers(0, 3))]
        victim.write_bytes(mutate_bytes(victim.read_bytes()[:4096], rng)[0])
        case.mutation = f"{victim.relative_to(folder)} junk"
    else:
        victim = jsons[int(rng.integers(0, len(jsons)))]
        victim.unlink()
        victim.symlink_to("/dev/zero")
        case.mutation = f"{victim.relative_to(folder)} -> /dev/zero"
    return ["transfer", str(corpus["mp4"]), "--prompt", "a red star on a white background", "--model", str(folder),
            *FAST]


def ui_case(case: Case, rng: np.random.Generator, corpus: dict, work: Path):
    """The handler call to make, as a function of the App."""
    videos = [str(corpus["mp4"]), str(corpus["gif"]), None, str(work), "/nonexistent.mp4",
              str(corpus["folder"] / "0000.png")]
    video = videos[int(rng.integers(0, len(videos)))]
    texts = ["a red star", "", "\x00", "a red star\n" * 200, "x" * 100_000, "\n\n\n", "a b c " * 50]
    prompts = texts[int(rng.integers(0, len(texts)))]
    numbers = {str(k): hostile_value(rng) for k in rng.choice(["seed", "steps", "iterations", "guidance_scale",
                                                               "frames", "start", "stride"], 2)}
    which = str(rng.choice(["run", "run", "preview"]))
    case.mutation = f"{which}: video {short(video)}, prompts {short(prompts)}, {short(numbers)}"

    def call(app):
        if which == "preview":
            return app.preview(video, numbers.get("start", 0), numbers.get("stride", 1), numbers.get("frames", 0))
        return app.run(video, prompts, numbers=numbers)
    return call


MAKERS = {"video": video_case, "config": config_case, "jobs": jobs_case, "model": model_case, "ui": ui_case}


def short(value, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


# ---------------------------------------------------------------------------------------------------- running

def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def vm_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")


def child(action, work: Path) -> None:
    """In the forked child: run, and leave the outcome in work/ (exit codes: 0, 1, 2 as the CLI; 70 uncaught)."""
    resource.setrlimit(resource.RLIMIT_AS, (vm_bytes() + CAP, vm_bytes() + CAP))
    out, err = io.StringIO(), io.StringIO()
    code = 70
    try:
        with redirect_stdout(out), redirect_stderr(err):
            code = action()
    except SystemExit as e:                 # argparse
        code = e.code if isinstance(e.code, int) else 2
    except BaseException:
        err.write(traceback.format_exc())
        code = 70
    (work / "stdout").write_text(out.getvalue()[-20000:])
    (work / "stderr").write_text(err.getvalue()[-20000:])
    os._exit(code if isinstance(code, int) else 0)


def run_case(case: Case, action, work: Path, baseline: int) -> None:
    start = time.monotonic()
    pid = os.fork()
    if pid == 0:
        os.chdir(work)
        child(action, work)
    deadline = start + TIMEOUT_S
    while True:
        done, status, usage = os.wait4(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            _, status, usage = os.wait4(pid, 0)
            case.outcome, case.detail = "hang", f"no exit in {TIMEOUT_S} s"
            break
        time.sleep(0.02)
    case.seconds = time.monotonic() - start
    case.growth_mb = max(0.0, usage.ru_maxrss * 1024 - baseline) / 2 ** 20
    if case.outcome:
        return
    stderr = (work / "stderr").read_text() if (work / "stderr").exists() else ""
    if os.WIFSIGNALED(status):
        case.outcome, case.detail = "memory blow-up", f"killed by signal {os.WTERMSIG(status)}"
    elif case.growth_mb * 2 ** 20 > GROWTH_LIMIT:
        case.outcome, case.detail = "memory blow-up", f"{case.growth_mb:.0f} MB over the parent"
    else:
        classify(case, os.WEXITSTATUS(status), stderr, work)


def classify(case: Case, code: int, stderr: str, work: Path) -> None:
    lines = [line for line in stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:")]
    if code == 70 or "Traceback (most recent call last)" in stderr:
        case.outcome, case.detail = "traceback", (lines[-1] if lines else "")[:300]
    elif code in (1, 2):
        ok = len(errors) == 1 or (case.kind == "jobs" and "failed" in stderr + (work / "stdout").read_text())
        case.outcome = "clean error" if ok else "traceback"
        case.detail = (errors[0] if errors else (lines[-1] if lines else "no message"))[:300]
        if case.kind == "jobs":
            check_batch(case, work)
    elif code == 0:
        case.outcome = "success"
        check_result(case, work)
    else:
        case.outcome, case.detail = "traceback", f"exit code {code}: {(lines[-1] if lines else '')[:200]}"


def check_result(case: Case, work: Path) -> None:
    if case.kind == "jobs":
        check_batch(case, work)
        return
    if case.kind == "ui":
        return
    records = list(work.rglob("run.json"))
    if not records:
        case.outcome, case.detail = "wrong success", "exit 0 without run.json"
        return
    try:
        record = json.loads(records[0].read_text(), parse_constant=lambda c: (_ for _ in ()).throw(ValueError(c)))
    except ValueError as e:
        case.outcome, case.detail = "wrong success", f"run.json is not strict JSON ({e})"
        return
    from PIL import Image

    frames = sorted((records[0].parent / "frames").glob("*.png"))
    if frames and all(np.ptp(np.asarray(Image.open(f))) == 0 for f in frames):
        case.outcome, case.detail = "wrong success", "every frame is of one value"
        return
    key, value = case.checks.get("key"), case.checks.get("value")
    config = record.get("config", {})
    flagged = {flag[2:].replace("-", "_") for flag in FAST if flag.startswith("--")}     # flags win over the file
    if key in config and key not in flagged and value is not None and not _same(config[key], value):
        case.outcome, case.detail = "wrong success", f"config set {key}={short(value)}, run.json has " \
                                                     f"{short(config[key])}"


def _same(recorded, given) -> bool:
    if isinstance(given, (list, tuple)):
        return isinstance(recorded, list) and list(recorded) == list(given)
    if isinstance(given, str) and isinstance(recorded, (list, tuple)):
        return list(recorded) == [given]
    return recorded == given


def check_batch(case: Case, work: Path) -> None:
    out = work / "out"
    summary = out / "summary.csv"
    if not summary.exists():
        return
    with open(summary) as f:
        rows = list(csv.DictReader(f))
    for row in rows:
        name, status = row.get("name") or row.get("job"), row.get("status")
        records = list((out / str(name)).rglob("run.json")) if name else []
        if status == "done" and not records:
            case.outcome, case.detail = "lost or mixed", f"job {name} done without a result"
            return


# ------------------------------------------------------------------------------------------------------ main

def run_cases(n: int, seed: int = 0, kinds: tuple[str, ...] = KINDS, progress: bool = False) -> list[Case]:
    from motiontransfer import cli
    from motiontransfer.pipeline import MODELS
    from motiontransfer.config import TransferConfig

    root = Path(tempfile.mkdtemp(prefix="mt-fuzz-"))
    os.environ["XDG_CACHE_HOME"] = str(root / "cache")
    try:
        corpus = make_corpus(root)
        MODELS.get(TransferConfig(device="cpu"))      # loaded once in the parent: every child starts warm
        app = None
        if "ui" in kinds:
            try:
                from motiontransfer.ui import App
                app = App(None, root / "ui", {"cache_dir": str(root / "cache")})
            except ImportError:
                kinds = tuple(k for k in kinds if k != "ui")
        baseline = rss_bytes()
        cases = []
        for i in range(n):
            rng = np.random.default_rng([seed, i])
            case = Case(i, kinds[i % len(kinds)], "")
            work = root / f"case-{i:04d}"
            work.mkdir()
            made = MAKERS[case.kind](case, rng, corpus, work)
            if case.kind == "ui":
                def action(call=made):
                    from motiontransfer.errors import MotionTransferError
                    try:
                        call(app)
                    except MotionTransferError as e:
                        print(f"error: {e}", file=sys.stderr)
                        return 2
                    return 0
            else:
                def action(argv=made):
                    return cli.main(argv)
            run_case(case, action, work, baseline)
            cases.append(case)
            if progress:
                print(f"{i + 1}/{n} {case.kind:6s} {case.outcome:14s} {case.seconds:5.1f}s {case.mutation[:70]}"
                      + (f" -> {case.detail[:80]}" if case.outcome in BAD else ""), flush=True)
            shutil.rmtree(work, ignore_errors=True)
        return cases
    finally:
        shutil.rmtree(root, ignore_errors=True)


def table(cases: list[Case]) -> str:
    counts = Counter((c.kind, c.outcome) for c in cases)
    kinds = [k for k in KINDS if any(c.kind == k for c in cases)]
    lines = ["| kind | cases | " + " | ".join(CLASSES) + " |", "|---" * (len(CLASSES) + 2) + "|"]
    for k in kinds + ["all"]:
        row = [c for c in cases if k == "all" or c.kind == k]
        cells = [str(sum(1 for c in row if c.outcome == cls)) for cls in CLASSES]
        lines.append(f"| {k} | {len(row)} | " + " | ".join(cells) + " |")
    peak = max((c.growth_mb for c in cases), default=0.0)
    lines.append(f"\nlargest memory growth over the parent: {peak:.0f} MB; slowest case "
                 f"{max((c.seconds for c in cases), default=0):.1f} s")
    return "\n".join(lines)


def self_test(root: Path) -> dict[str, str]:
    """Actions whose outcome is known, run as cases: {expected class: the class the harness gave}."""
    actions = {"clean error": lambda: print("error: bad input", file=sys.stderr) or 2,
               "traceback": lambda: 1 / 0, "hang": lambda: time.sleep(120),
               "memory blow-up": lambda: np.ones(int(1.6 * 2 ** 30 // 8)).sum() and 0}
    global TIMEOUT_S
    given = {}
    for expected, action in actions.items():
        TIMEOUT_S = 3 if expected == "hang" else 300          # a loaded machine allocates slowly
        case = Case(0, "ui", expected)
        work = root / expected.replace(" ", "-")
        work.mkdir(parents=True)
        run_case(case, action, work, rss_bytes())
        given[expected] = case.outcome
    return given


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--self-test", action="store_true",
                        help="run four cases of known outcome and print what the harness made of them (JSON)")
    parser.add_argument("--cases", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--kinds", nargs="+", default=list(KINDS), choices=KINDS)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--show", choices=CLASSES, action="append", default=[],
                        help="list the cases of this class (repeatable; default: every bad class)")
    args = parser.parse_args()
    if args.self_test:
        with tempfile.TemporaryDirectory() as tmp:
            print(json.dumps(self_test(Path(tmp))))
        return
    cases = run_cases(args.cases, args.seed, tuple(args.kinds), progress=True)
    print("\n" + table(cases))
    for c in cases:
        if c.outcome in (args.show or BAD):
            print(f"[{c.number}] {c.kind} {c.outcome}: {c.mutation} -> {c.detail}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps([c.__dict__ for c in cases], indent=1, default=str))


if __name__ == "__main__":
    main()
