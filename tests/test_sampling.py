"""Guided sampling: the window, the learning rates, restart, determinism, the optimisation itself."""

import pytest
import torch

from motiontransfer.sampling import guided_sample, guided_steps, learning_rates
from motiontransfer.schedules import DDIMSchedule

from conftest import SCHEDULER


def test_guidance_window_is_the_first_40_percent():
    ts = DDIMSchedule(SCHEDULER, 50).timesteps
    guided = guided_steps(50, (0.0, 0.4))
    assert guided == list(range(20)) and ts[guided[0]] == 981 and ts[guided[-1]] == 601
    assert guided_steps(50, (0.0, 0.0)) == []


def test_learning_rate_is_linear_first_to_last():
    lrs = learning_rates(20, 0.007, 0.004)
    assert lrs[0] == 0.007 and abs(lrs[-1] - 0.004) < 1e-12
    assert all(abs((b - a) - (lrs[1] - lrs[0])) < 1e-12 for a, b in zip(lrs, lrs[1:]))


def _quadratic_guidance(target, counts):
    def guidance(t):
        counts["source"] += 1                                   # once per guided timestep
        return lambda x: (x - target).pow(2).mean()
    return guidance


def test_guidance_moves_the_latent_and_counts_its_work():
    target = torch.ones(1, 4, 3, 4, 4)
    counts = {"source": 0}
    x_T = torch.zeros(1, 4, 3, 4, 4)
    _, history = guided_sample(lambda x, t: torch.zeros_like(x), x_T, DDIMSchedule(SCHEDULER, 10),
                               guidance=_quadratic_guidance(target, counts), guided=[0, 1, 2],
                               iterations=5, learning_rate=(0.1, 0.05), progress=False)
    assert counts["source"] == 3
    assert [s.t for s in history.guided] == [901, 801, 701] and [s.index for s in history.guided] == [0, 1, 2]
    assert [s.lr for s in history.guided] == pytest.approx([0.1, 0.075, 0.05])
    assert history.backward_passes == 15 and history.unet_passes == 10
    for s in history.guided:
        assert s.losses[-1] < s.losses[0]


def test_measure_replaces_the_prediction_at_guided_steps():
    target = torch.ones(1, 4, 3, 4, 4)
    calls = {"predict": 0, "measure": 0}

    def predict(x, t):
        calls["predict"] += 1
        return torch.zeros_like(x)

    def measure(x, t):
        calls["measure"] += 1
        return torch.zeros_like(x), float((x - target).pow(2).mean())

    _, history = guided_sample(predict, torch.zeros(1, 4, 3, 4, 4), DDIMSchedule(SCHEDULER, 10),
                               guidance=_quadratic_guidance(target, {"source": 0}), guided=[0, 1],
                               iterations=4, learning_rate=(0.1, 0.1), progress=False, measure=measure)
    assert calls == {"predict": 8, "measure": 2}
    for s in history.guided:
        assert len(s.losses) == 4 and s.loss_after < s.losses[-1]


def test_restart_doubles_the_passes_and_uses_the_generator():
    predict = lambda x, t: 0.1 * x  # noqa: E731
    x_T = torch.randn(1, 4, 2, 4, 4, generator=torch.Generator().manual_seed(0))
    a, ha = guided_sample(predict, x_T, DDIMSchedule(SCHEDULER, 10), restart=True, generator=torch.Generator().manual_seed(1),
                          progress=False)
    b, _ = guided_sample(predict, x_T, DDIMSchedule(SCHEDULER, 10), restart=True, generator=torch.Generator().manual_seed(1),
                         progress=False)
    c, _ = guided_sample(predict, x_T, DDIMSchedule(SCHEDULER, 10), restart=True, generator=torch.Generator().manual_seed(2),
                         progress=False)
    assert ha.unet_passes == 19 and ha.restarts == 9
    assert torch.equal(a, b) and not torch.equal(a, c)
