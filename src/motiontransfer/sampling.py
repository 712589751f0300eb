"""Guided sampling (paper Sec. 4, Eq. 5):

    x*_t    = argmin over x~_t of L(SMM(f(x_t)), SMM(f(x~_t)))     a few Adam steps on the latent itself
    x~_t-1  = Phi(x*_t, P)                                          one step of the schedule (DDIM, or Euler for a
                                                                    flow model) with classifier-free guidance

Inside the guidance window each step gets a fresh Adam with its own learning rate (linear from the first
to the last guided step); outside it the steps are plain ones. Steps are named by their index in the schedule
(0: the noisiest); the model is called with the schedule's time for that index. The loop runs under `no_grad`; only the
optimisation opens `enable_grad`, on a detached copy of the latent. With `restart` (the reference's extra),
each step's result is re-noised back to t with fresh noise and denoised once more.

Two ways to guide for less (both off by default):

    early_stop   a step's iterations end, before the backward pass, at the first iteration whose loss fell by
                 less than this fraction of the previous one's (or rose): that step costs one truncated forward
                 more than it has backward passes, and its last loss is the loss at the latent it returns
    reuse_every  only every k-th guided step (the first always) is optimised; each other guided step adds the
                 change of the last optimised one (optimised latent minus the latent before it), scaled by the
                 ratio of the two steps' learning rates, and costs no UNet pass. The scaling because Adam moves
                 each element by about the learning rate per iteration whatever the gradient's size, so the same
                 iterations at another learning rate would have moved the latent in proportion
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
from tqdm.auto import tqdm

from .schedules import Schedule

PredictFn = Callable[[torch.Tensor, float], torch.Tensor]      # (x_t, model time) -> model output, CFG applied
LossFn = Callable[[torch.Tensor], torch.Tensor]                # x_t -> scalar loss
GuidanceFn = Callable[[int], LossFn]                           # step index -> the loss there (source side once)
MeasureFn = Callable[[torch.Tensor, int], tuple[torch.Tensor, float]]   # (x, step index) -> (output, loss at x)


@dataclass
class GuidedStep:
    t: float                                                   # the model time of the step (DDIM: its timestep)
    lr: float
    losses: list[float] = field(default_factory=list)          # one per Adam iteration, before its update; with
                                                               # early_stop, then the loss the step stopped at
    loss_after: float | None = None                            # at the optimised latent
    iterations: int = 0                                        # Adam updates made: backward passes
    reused: bool = False                                       # the last optimised change applied (reuse_every)
    index: int = 0                                             # the step's index in the schedule


@dataclass
class SampleHistory:
    guided: list[GuidedStep] = field(default_factory=list)
    unet_passes: int = 0           # full UNet calls (a CFG pass counts once; its batch is 2)
    restarts: int = 0

    @property
    def backward_passes(self) -> int:
        return sum(s.iterations for s in self.guided)


def guided_steps(steps: int, window: tuple[float, float]) -> list[int]:
    """The step indices in the window, given as fractions of the schedule (0.0, 0.4): the first 40% of steps."""
    return list(range(steps))[int(round(window[0] * steps)):int(round(window[1] * steps))]


def learning_rates(n: int, first: float, last: float) -> list[float]:
    if n == 1:
        return [first]
    return [first + (last - first) * i / (n - 1) for i in range(n)]


def relative_decrease(before: float, after: float) -> float:
    """How much the loss fell, as a fraction of `before` (negative when it rose; 0 when `before` is 0)."""
    return (before - after) / abs(before) if before else 0.0


def optimise_latent(x: torch.Tensor, loss_fn: LossFn, iterations: int, lr: float, step: GuidedStep, *,
                    measure_after: bool = True, early_stop: float = 0.0) -> torch.Tensor:
    """A fresh Adam on the latent; returns the optimised latent, detached. `measure_after` evaluates the loss at
    the result with one more (no-grad) pass; without it the caller fills `step.loss_after`.

    With `early_stop` > 0, an iteration whose loss fell by less than that fraction of the previous iteration's
    (`relative_decrease`) ends the loop before its backward pass; its loss, the loss at the latent returned, is
    the step's last entry in `losses` and its `loss_after` (no pass to measure it)."""
    stopped = False
    with torch.enable_grad():
        x = x.detach().clone().requires_grad_(True)
        opt = torch.optim.Adam([x], lr=lr)
        for _ in range(iterations):
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(x)
            if early_stop and step.losses:
                value = float(loss.detach())
                if relative_decrease(step.losses[-1], value) < early_stop:
                    step.losses.append(value)
                    step.loss_after, stopped = value, True
                    break
            loss.backward()
            opt.step()
            step.losses.append(float(loss.detach()))
            step.iterations += 1
    if iterations and measure_after and not stopped:
        with torch.no_grad():
            step.loss_after = float(loss_fn(x))
    return x.detach()


def guided_sample(predict: PredictFn, x_T: torch.Tensor, schedule: Schedule, *,
                  guidance: GuidanceFn | None = None, guided: list[int] = (), iterations: int = 10,
                  learning_rate: tuple[float, float] = (0.007, 0.004), restart: bool = False,
                  generator: torch.Generator | None = None, progress: bool = True, first_step: int = 0,
                  measure: MeasureFn | None = None, early_stop: float = 0.0, reuse_every: int = 1,
                  callback: Callable[[int, float, torch.Tensor], None] | None = None
                  ) -> tuple[torch.Tensor, SampleHistory]:
    """Samples from x_T (B, C, F, h, w) at step index `first_step` of `schedule` (0: the noisiest) down to the
    clean latent, guided at the step indices `guided`.

    `measure`, when given, replaces `predict` right after each optimisation: it returns the prediction and the
    guidance loss read off that same pass, so the loss after optimisation costs no extra model forward.
    `early_stop` and `reuse_every`: the module's docstring. `guidance(i)` is called at optimised steps only.
    `callback(i, t, x)` after every step, with the step's index, model time and result.
    """
    if reuse_every < 1:
        raise ValueError(f"reuse_every must be 1 or more, got {reuse_every}")
    steps = list(range(first_step, len(schedule.timesteps)))
    guided = [i for i in steps if i in set(guided)] if guidance is not None and iterations > 0 else []
    rates = dict(zip(guided, learning_rates(len(guided), *learning_rate)))
    optimised = set(guided[::reuse_every])
    change, change_lr = None, None       # the last optimised step's change of the latent, and its learning rate
    if restart and generator is None:
        raise ValueError("restart needs an explicit generator")
    history = SampleHistory()
    x = x_T
    bar = tqdm(steps, desc="sampling", disable=not progress, dynamic_ncols=True)
    with torch.no_grad():
        for i in bar:
            t = schedule.timesteps[i]
            if i in optimised:
                step = GuidedStep(t=t, lr=rates[i], index=i)
                before = x
                x = optimise_latent(x, guidance(i), iterations, rates[i], step, measure_after=measure is None,
                                    early_stop=early_stop)
                if reuse_every > 1:
                    change, change_lr = x - before, rates[i]
                if measure is not None:
                    out, step.loss_after = measure(x, i)
                else:
                    out = predict(x, t)
                history.guided.append(step)
                bar.set_postfix(loss=f"{step.loss_after:.4f}")
            elif i in rates:                                     # reuse_every: no optimisation at this step
                history.guided.append(GuidedStep(t=t, lr=rates[i], reused=True, index=i))
                x = x + change * (rates[i] / change_lr)
                out = predict(x, t)
            else:
                out = predict(x, t)
            x_prev = schedule.step(out, i, x)
            history.unet_passes += 1
            if restart and i < len(schedule.timesteps) - 1:
                x = schedule.renoise(x_prev, i, generator)
                x_prev = schedule.step(predict(x, t), i, x)
                history.unet_passes += 1
                history.restarts += 1
            x = x_prev
            if callback is not None:
                callback(i, t, x)
    return x, history
