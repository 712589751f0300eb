"""Cheaper guidance (issue 14): early_stop and reuse_every. Off, the guided loop is the one before them, bit for
bit; on, they save exactly the passes they say, and the pipeline counts and records them."""

import json

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler

import motiontransfer
from motiontransfer import cli
from motiontransfer.config import TransferConfig, resolve
from motiontransfer.errors import ConfigError
from motiontransfer.sampling import GuidedStep, guided_sample, learning_rates, optimise_latent, relative_decrease
from motiontransfer.schedules import DDIMSchedule

from conftest import SCHEDULER, moving_square

GUIDED = [0, 1, 2, 3, 4]                    # the first half of 10 DDIM steps (t = 901 ... 501)
SHAPE = (1, 4, 3, 4, 4)


def _predict(x, t):
    return 0.1 * x


def _loss(target):
    return lambda x: (x - target).pow(2).mean() + (x[:, :, 1:] - x[:, :, :-1]).abs().mean()


def _counted(guidance, calls):
    """`guidance` whose losses count their forward passes in calls["forward"] and its uses in calls["source"]."""
    def counted(t):
        calls["source"] += 1
        loss = guidance(t)

        def fn(x):
            calls["forward"] += 1
            return loss(x)
        return fn
    return counted


def _loop_before_issue_14(x, loss, steps, guided, iterations, learning_rate):
    """The guided DDIM loop as it was before early_stop and reuse_every, for the bit-for-bit check."""
    scheduler = DDIMScheduler.from_config(SCHEDULER)
    scheduler.set_timesteps(steps)
    timesteps = [int(t) for t in scheduler.timesteps]
    rates = dict(zip([timesteps[i] for i in guided], learning_rates(len(guided), *learning_rate)))
    with torch.no_grad():
        for t in timesteps:
            if t in rates:
                with torch.enable_grad():
                    x = x.detach().clone().requires_grad_(True)
                    opt = torch.optim.Adam([x], lr=rates[t])
                    for _ in range(iterations):
                        opt.zero_grad(set_to_none=True)
                        loss(x).backward()
                        opt.step()
                x = x.detach()
            x = scheduler.step(_predict(x, t), t, x).prev_sample
    return x


# ------------------------------------------------------------------------------------------------ off

def test_off_is_the_loop_before_bit_for_bit():
    x_T = torch.randn(SHAPE, generator=torch.Generator().manual_seed(0))
    target = torch.randn(SHAPE, generator=torch.Generator().manual_seed(1))
    before = _loop_before_issue_14(x_T, _loss(target), 10, GUIDED, 4, (0.1, 0.05))
    calls = {"source": 0, "forward": 0}
    after, history = guided_sample(_predict, x_T, DDIMSchedule(SCHEDULER, 10), guidance=_counted(lambda t: _loss(target), calls),
                                   guided=GUIDED, iterations=4, learning_rate=(0.1, 0.05), progress=False,
                                   early_stop=0.0, reuse_every=1)
    assert torch.equal(after, before)
    assert [(s.iterations, len(s.losses), s.reused) for s in history.guided] == [(4, 4, False)] * 5
    assert history.backward_passes == 20 and calls == {"source": 5, "forward": 5 * 4 + 5}   # + the loss after


def test_off_in_the_pipeline_gives_the_same_frames(tiny_model):
    """Both options off is the previous recipe: every guided step optimised, every iteration run."""
    opts = dict(model=str(tiny_model), steps=6, use_cache=False, quiet=True, output_dir=False, seed=0, iterations=2)
    previous = motiontransfer.transfer(moving_square(), "a green star", preset="previous", **opts)
    off = motiontransfer.transfer(moving_square(), "a green star", early_stop=0.0, reuse_every=1, **opts)
    assert np.array_equal(previous.frames, off.frames) and previous.counts == off.counts
    assert [s.iterations for s in off.history.guided] == [2] * len(off.history.guided)


# ------------------------------------------------------------------------------------------------ early_stop

def test_early_stop_ends_before_the_backward_of_the_first_flat_iteration():
    values = iter([1.0, 0.5, 0.3, 0.29, 0.1])               # relative decreases 0.5, 0.4, 0.033, ...
    inputs = []

    def loss(x):
        inputs.append(x.detach().clone())
        return x.sum() * 0.0 + next(values)                  # a scripted value with a gradient (zero)

    step = GuidedStep(t=901, lr=0.1)
    x = optimise_latent(torch.zeros(SHAPE), loss, 10, 0.1, step, early_stop=0.1)
    assert step.losses == pytest.approx([1.0, 0.5, 0.3, 0.29]) and step.iterations == 3
    assert step.loss_after == pytest.approx(0.29)            # read off the stopping pass: no pass to measure it
    assert len(inputs) == 4 and torch.equal(x, inputs[-1])   # the latent the last loss was taken at


def test_early_stop_stops_when_the_loss_plateaus_and_on_a_rise():
    target = torch.ones(SHAPE)
    step = GuidedStep(t=901, lr=0.05)
    optimise_latent(torch.zeros(SHAPE), lambda x: (x - target).pow(2).mean() + 1.0, 100, 0.05, step, early_stop=0.01)
    assert 1 < step.iterations < 100 and len(step.losses) == step.iterations + 1
    decreases = [relative_decrease(a, b) for a, b in zip(step.losses, step.losses[1:])]
    assert all(d >= 0.01 for d in decreases[:-1]) and decreases[-1] < 0.01
    rising = GuidedStep(t=901, lr=0.1)
    optimise_latent(torch.zeros(SHAPE), lambda x: (x - target).pow(2).mean(), 10, 5.0, rising, early_stop=1e-6)
    assert rising.iterations < 10 and rising.losses[-1] > rising.losses[-2]     # Adam overshoots at lr 5


def test_early_stop_counts_in_guided_sample():
    target = torch.ones(SHAPE)
    calls = {"source": 0, "forward": 0}
    _, history = guided_sample(_predict, torch.zeros(SHAPE), DDIMSchedule(SCHEDULER, 10),
                               guidance=_counted(lambda t: (lambda x: (x - target).pow(2).mean() + 1.0), calls),
                               guided=GUIDED, iterations=50, learning_rate=(0.05, 0.05), progress=False,
                               early_stop=0.01)
    stopped = [s for s in history.guided if s.iterations < 50]
    assert stopped and history.backward_passes == sum(s.iterations for s in history.guided) < 5 * 50
    # a forward per loss recorded, plus a measuring pass for each step that ran all its iterations
    assert calls["forward"] == sum(len(s.losses) for s in history.guided) + 5 - len(stopped)


# ------------------------------------------------------------------------------------------------ reuse_every

def test_reuse_every_optimises_every_kth_step_and_applies_the_scaled_change():
    x_T = torch.randn(SHAPE, generator=torch.Generator().manual_seed(0))
    target = torch.randn(SHAPE, generator=torch.Generator().manual_seed(1))
    calls = {"source": 0, "forward": 0}
    seen, after = {}, {}

    def predict(x, t):
        seen[t] = x.clone()
        return _predict(x, t)

    _, history = guided_sample(predict, x_T, DDIMSchedule(SCHEDULER, 10), guidance=_counted(lambda t: _loss(target), calls),
                               guided=GUIDED, iterations=4, learning_rate=(0.1, 0.05), progress=False,
                               reuse_every=2, callback=lambda i, t, x: after.setdefault(t, x.clone()))
    assert [s.reused for s in history.guided] == [False, True, False, True, False]
    assert [s.iterations for s in history.guided] == [4, 0, 4, 0, 4]
    assert history.backward_passes == 12 and calls == {"source": 3, "forward": 3 * 4 + 3}
    assert history.unet_passes == 10                                  # no pass more, no pass less
    lr = learning_rates(5, 0.1, 0.05)
    change = seen[901] - x_T                                          # the first optimised step's change
    torch.testing.assert_close(seen[801], after[901] + change * (lr[1] / lr[0]), rtol=0, atol=1e-6)
    change = seen[701] - after[801]
    torch.testing.assert_close(seen[601], after[701] + change * (lr[3] / lr[2]), rtol=0, atol=1e-6)


def test_reuse_every_larger_than_the_window_optimises_the_first_step_only():
    calls = {"source": 0, "forward": 0}
    _, history = guided_sample(_predict, torch.zeros(SHAPE), DDIMSchedule(SCHEDULER, 10),
                               guidance=_counted(lambda t: _loss(torch.ones(SHAPE)), calls), guided=GUIDED,
                               iterations=3, progress=False, reuse_every=100)
    assert [s.reused for s in history.guided] == [False] + [True] * 4 and history.backward_passes == 3


# ------------------------------------------------------------------------------------------------ pipeline

@pytest.fixture()
def opts(tiny_model):
    # 10 steps, window (0, 0.5): 5 guided steps of 3 iterations
    return dict(model=str(tiny_model), steps=10, guidance_window=(0.0, 0.5), iterations=3, seed=0, quiet=True,
                use_cache=False, reuse_every=1)


def test_pipeline_counts_what_each_option_saves_exactly(opts, tmp_path):
    video = moving_square()
    full = motiontransfer.transfer(video, "a green star", output_dir=False, **opts)
    assert full.counts["unet_backward"] == 15 and full.counts["unet_truncated_forward"] == 5 + 15

    reuse = motiontransfer.transfer(video, "a green star", output_dir=False, **(opts | {"reuse_every": 2}))
    assert reuse.counts["unet_backward"] == 3 * 3                         # steps 1, 3, 5 optimised
    assert reuse.counts["unet_truncated_forward"] == 3 + 3 * 3            # their source features and iterations
    assert reuse.counts["unet_forward"] == full.counts["unet_forward"]    # sampling and inversion unchanged

    stop = motiontransfer.transfer(video, "a green star", output_dir=tmp_path / "out", early_stop=0.99, **opts)
    steps = stop.history.guided
    assert [s.iterations for s in steps] == [1] * 5                       # no iteration lowers the loss by 99%
    assert stop.counts["unet_backward"] == 5
    assert stop.counts["unet_truncated_forward"] == 5 + 5 * 2             # sources, then 2 forwards per step
    record = json.loads((tmp_path / "out" / "run.json").read_text())
    assert [g["iterations"] for g in record["guidance"]] == [1] * 5
    assert [len(g["losses"]) for g in record["guidance"]] == [2] * 5
    assert record["config"]["early_stop"] == 0.99 and not any(g["reused"] for g in record["guidance"])


# ------------------------------------------------------------------------------------------------ options

@pytest.mark.parametrize("changes, flag", [
    ({"early_stop": -0.5}, "--early-stop"), ({"early_stop": 1.5}, "--early-stop"),
    ({"reuse_every": 0}, "--reuse-every"), ({"reuse_every": -2}, "--reuse-every"),
])
def test_bad_values_are_one_line_config_errors(changes, flag):
    with pytest.raises(ConfigError) as error:
        resolve(overrides=changes)
    assert str(error.value).startswith(flag) and "\n" not in str(error.value)


def test_options_are_flags_and_method_options():
    args = cli.build_parser().parse_args(["transfer", "v.mp4", "--prompt", "p", "--early-stop", "0.05",
                                          "--reuse-every", "2"])
    assert cli._method_options(args) == {"early_stop": 0.05, "reuse_every": 2}
    config = TransferConfig()
    assert (config.early_stop, config.reuse_every) == (0.0, 3)      # issue 14's default: every third step
    with pytest.raises(ConfigError, match="reuse_every would do nothing"):
        motiontransfer.invert(moving_square(), reuse_every=2)
