"""benchmarks/fuzz.py in a bounded form: 100 cases (all five input kinds), none ending in a traceback, a hang, a
memory blow-up, a wrong success or a lost result. MT_SLOW=1 runs the README's 1000."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "fuzz.py"


@pytest.fixture(scope="module")
def fuzz():
    spec = importlib.util.spec_from_file_location("fuzz", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["fuzz"] = module                    # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_the_harness_tells_outcomes_apart(fuzz, tmp_path, monkeypatch):
    """Its classes are what they say: a clean error, a traceback, a hang and a blow-up are told apart."""
    import time

    import numpy as np

    actions = {"clean error": lambda: print("error: bad input", file=sys.stderr) or 2,
               "traceback": lambda: 1 / 0, "hang": lambda: time.sleep(120),
               "memory blow-up": lambda: np.ones(int(1.6 * 2 ** 30 // 8)).sum() and 0}
    for expected, action in actions.items():
        monkeypatch.setattr(fuzz, "TIMEOUT_S", 3 if expected == "hang" else 300)   # a loaded machine is slow
        case = fuzz.Case(0, "ui", expected)
        work = tmp_path / expected.replace(" ", "-")
        work.mkdir()
        fuzz.run_case(case, action, work, fuzz.rss_bytes())
        assert case.outcome == expected, (case.outcome, case.detail)


def test_a_slice_of_cases_ends_well(fuzz):
    cases = fuzz.run_cases(1000 if os.environ.get("MT_SLOW") == "1" else 100, seed=0)
    bad = [f"[{c.number}] {c.kind}: {c.mutation} -> {c.outcome}: {c.detail}" for c in cases if c.outcome in fuzz.BAD]
    assert not bad, "\n".join(bad)
    assert {c.kind for c in cases} == set(fuzz.KINDS) - ({"ui"} if not _has_gradio() else set())


def _has_gradio() -> bool:
    try:
        import gradio  # noqa: F401
    except ImportError:
        return False
    return True
