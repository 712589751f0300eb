"""benchmarks/fuzz.py in a bounded form: its outcome classes are told apart, and 100 cases (all five input kinds)
end in no traceback, hang, memory blow-up, wrong success or lost result. MT_SLOW=1 runs the README's 1000.

The harness runs in a fresh process: it forks a child per case, and forking this test session (which runs
other threads) could deadlock the child."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "fuzz.py"
BAD = ("traceback", "hang", "memory blow-up", "wrong success", "lost or mixed")


def _run(*args: str, timeout: int) -> subprocess.CompletedProcess:
    env = os.environ | {"PYTHONPATH": os.pathsep.join(sys.path), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, env=env,
                          timeout=timeout)


def test_the_harness_tells_outcomes_apart():
    done = _run("--self-test", timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
    given = json.loads(done.stdout.strip().splitlines()[-1])
    assert given == {k: k for k in ("clean error", "traceback", "hang", "memory blow-up")}


def test_a_slice_of_cases_ends_well(tmp_path):
    n = 1000 if os.environ.get("MT_SLOW") == "1" else 100
    done = _run("--cases", str(n), "--json", str(tmp_path / "fuzz.json"), timeout=3600)
    assert done.returncode == 0, done.stderr[-2000:]
    cases = json.loads((tmp_path / "fuzz.json").read_text())
    assert len(cases) == n
    bad = [f"[{c['number']}] {c['kind']}: {c['mutation']} -> {c['outcome']}: {c['detail']}" for c in cases
           if c["outcome"] in BAD]
    assert not bad, "\n".join(bad)
    kinds = {c["kind"] for c in cases}
    assert {"video", "config", "jobs", "model"} <= kinds
