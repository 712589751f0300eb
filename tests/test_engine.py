"""engine.run_tasks here (Ray runs are in test_batch.py and evaluation/test_suite.py, on a local cluster)."""

import pytest

from motiontransfer.engine import run_tasks
from motiontransfer.errors import MotionTransferError


def half(x: int) -> float:
    if x == 3:
        raise ValueError("three")
    return x / 2


def test_local_runs_in_order_and_a_failure_does_not_stop_the_rest():
    out = list(run_tasks(half, [1, 2, 3, 4]))
    assert [item for item, _ in out] == [1, 2, 3, 4]
    assert [o for _, o in out if not isinstance(o, Exception)] == [0.5, 1.0, 2.0]
    assert isinstance(out[2][1], ValueError) and str(out[2][1]) == "three"


def test_ray_missing_is_an_error_a_user_can_act_on(monkeypatch):
    import builtins

    real = builtins.__import__

    def no_ray(name, *args, **kwargs):
        if name == "ray":
            raise ImportError("no ray")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_ray)
    with pytest.raises(MotionTransferError, match=r"motiontransfer\[batch\]"):
        list(run_tasks(half, [1], ray_address="local"))
