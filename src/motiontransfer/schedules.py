"""Noise schedules behind one object: DDIM (UNet3D family) and flow matching (Wan family).

Every loop of the method (inversion, guided sampling, SDEdit, restart) walks a schedule by *step index*:
index 0 is the noisiest sampling step, index n - 1 the last; step i turns the latent of index i into the latent
of index i + 1 (after the last, the clean latent). The value the denoiser is conditioned on at step i is
`timesteps[i]` (DDIM: the integer timestep t; flow: sigma x 1000 as diffusers' Wan pipeline passes it). Cache
keys and records use the index; `timesteps` only feeds the model.

Notation, DDIM (Song et al. 2021; diffusers' `DDIMScheduler`, whose maths is reused here):

    x_t = sqrt(a_t) x_0 + sqrt(1 - a_t) eps          a_t: alphas_cumprod[t]

Notation, flow matching (rectified flow; Wan2.1):

    x_s = (1 - s) x_0 + s eps                         s: sigma in [0, 1]
    v   = eps - x_0                                   what the model predicts
    s'  = k s / (1 + (k - 1) s)                       the schedule's shift k (`flow_shift`)
    Euler step:  x_s_next = x_s + (s_next - s) v(x_s, s)          (sampling: s_next < s; inversion: s_next > s)

The sigmas and timesteps of a flow schedule come from the model folder's own scheduler class (diffusers'
`UniPCMultistepScheduler` with `use_flow_sigmas`, or `FlowMatchEulerDiscreteScheduler`), so the grid is the one
the model's pipeline samples on; the steps themselves are one-step solvers (UniPC's multistep history would go
stale once the latent is optimised between steps).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Protocol

import torch

from .config import INVERSION_SOLVERS
from .errors import ConfigError

PredictFn = Callable[[torch.Tensor, float], torch.Tensor]    # (x (B, C, F, h, w), model time) -> model output
FLOW_SOLVERS = INVERSION_SOLVERS                             # flow inversion: one pass a step, or two


@dataclass
class InversionPlan:
    """An inversion from the clean latent up the schedule: `times[j]` is the model time of inversion step j's
    first pass, and after step j the latent is that of sampling step `keep[j]` when j is in `keep`."""

    times: list[float]
    keep: dict[int, int]
    step: Callable[[PredictFn, torch.Tensor, int], torch.Tensor]   # (predict, x, j) -> x after inversion step j
    passes_per_step: int = 1


class Schedule(Protocol):
    """What the method's loops need of a noise schedule; see the module docstring for the conventions."""

    kind: str                      # "ddim" | "flow"
    steps: int
    timesteps: list                # model time of each sampling step, noisiest first

    def step(self, out: torch.Tensor, i: int, x: torch.Tensor) -> torch.Tensor: ...
    def renoise(self, x_next: torch.Tensor, i: int, generator: torch.Generator) -> torch.Tensor: ...
    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, i: int) -> torch.Tensor: ...
    def sdedit_start(self, strength: float) -> int: ...
    def inversion(self, inversion_steps: int, keep: list[int], solver: str | None = None) -> InversionPlan: ...


def _noise_like(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    return torch.randn(x.shape, generator=generator, dtype=torch.float32).to(x.device, x.dtype)


# --------------------------------------------------------------------------------------------------- DDIM

class DDIMSchedule:
    """DDIM over diffusers' `DDIMScheduler` / `DDIMInverseScheduler` (eta 0), from a model's scheduler config."""

    kind = "ddim"

    def __init__(self, config: dict, steps: int):
        from diffusers import DDIMScheduler

        self.config, self.steps = config, steps
        self._scheduler = DDIMScheduler.from_config(config)
        self._scheduler.set_timesteps(steps)
        self.timesteps = [int(t) for t in self._scheduler.timesteps]      # ZeroScope, 50: 981, 961, ..., 1
        self.num_train_timesteps = int(self._scheduler.config.num_train_timesteps)

    @property
    def alphas_cumprod(self) -> torch.Tensor:
        return self._scheduler.alphas_cumprod

    def step(self, out: torch.Tensor, i: int, x: torch.Tensor) -> torch.Tensor:
        return self._scheduler.step(out, self.timesteps[i], x).prev_sample

    def renoise(self, x_next: torch.Tensor, i: int, generator: torch.Generator) -> torch.Tensor:
        """Forward diffusion from the level step i reached (t - T / steps) back up to t = timesteps[i] (the
        reference's restart), with noise drawn from `generator` on the CPU."""
        t = self.timesteps[i]
        alpha_t = self.alphas_cumprod[t]
        alpha_prev = self.alphas_cumprod[t - self.num_train_timesteps // self.steps]
        ratio = (alpha_t / alpha_prev).to(x_next.dtype)
        return ratio.sqrt() * x_next + (1 - ratio).sqrt() * _noise_like(x_next, generator)

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, i: int) -> torch.Tensor:
        return self._scheduler.add_noise(x0, noise, torch.tensor([self.timesteps[i]]))

    def sdedit_start(self, strength: float) -> int:
        """The first sampling step at or below `strength` x T (the last step when none is)."""
        limit = strength * self.num_train_timesteps
        return next((i for i, t in enumerate(self.timesteps) if t <= limit), len(self.timesteps) - 1)

    def inversion(self, inversion_steps: int, keep: list[int], solver: str | None = None) -> InversionPlan:
        """DDIM inversion with `inversion_steps` steps up to the noisiest kept sampling step. Raises ConfigError
        when a kept step's timestep is not on the inversion grid (e.g. 50 sampling steps, 75 inversion steps)."""
        from diffusers import DDIMInverseScheduler

        if solver is not None:
            raise ConfigError(f"a DDIM model inverts with DDIM; --inversion-solver {solver} is for flow models")
        if inversion_steps > self.num_train_timesteps - 1:
            raise ConfigError(f"--inversion-steps must be at most {self.num_train_timesteps - 1}, got "
                              f"{inversion_steps}")
        inverse = DDIMInverseScheduler.from_config(self.config)
        inverse.set_timesteps(inversion_steps)
        grid = [int(t) for t in inverse.timesteps]
        wanted = {self.timesteps[i]: i for i in keep}
        missing = sorted(set(wanted) - set(grid))
        if missing:
            raise ConfigError(f"{inversion_steps} inversion steps do not reach timesteps {missing[:5]}; use a "
                              f"multiple of the sampling steps for --inversion-steps")
        grid = grid[:grid.index(max(wanted)) + 1]

        def step(predict: PredictFn, x: torch.Tensor, j: int) -> torch.Tensor:
            return inverse.step(predict(x, grid[j]), grid[j], x).prev_sample

        return InversionPlan(times=grid, keep={j: wanted[t] for j, t in enumerate(grid) if t in wanted}, step=step)


# --------------------------------------------------------------------------------------------------- flow

def shift_sigmas(sigmas: torch.Tensor, shift: float) -> torch.Tensor:
    """s' = k s / (1 + (k - 1) s): more of the steps at high noise for k > 1."""
    return shift * sigmas / (1 + (shift - 1) * sigmas)


def flow_shift(config: dict) -> float:
    """The shift a flow scheduler config declares (UniPC's `flow_shift`, FlowMatchEuler's `shift`)."""
    return float(config.get("flow_shift", config.get("shift", 1.0)))


class FlowSchedule:
    """Flow matching with one-step solvers, on the sigma grid of the model's own scheduler class."""

    kind = "flow"

    def __init__(self, config: dict, steps: int):
        self.config, self.steps = config, steps
        self.num_train_timesteps = int(config.get("num_train_timesteps", 1000))
        self.sigmas, self.timesteps = self._grid(steps)          # sigmas: steps + 1 values, the last 0

    def _grid(self, steps: int) -> tuple[list[float], list[float]]:
        import diffusers

        name = self.config.get("_class_name", "FlowMatchEulerDiscreteScheduler")
        cls = getattr(diffusers, name, None)
        if cls is None or not hasattr(cls, "set_timesteps"):
            raise ConfigError(f"unknown scheduler class {str(name)[:60]!r} in the model's scheduler config")
        scheduler = cls.from_config(self.config)
        scheduler.set_timesteps(steps)
        sigmas = [float(s) for s in scheduler.sigmas]
        if len(sigmas) != steps + 1 or sigmas[-1] != 0.0 or any(b >= a for a, b in zip(sigmas, sigmas[1:])):
            raise ConfigError(f"the scheduler {name} does not give a decreasing flow sigma grid ending at 0; a "
                              f"flow model's scheduler needs use_flow_sigmas (UniPC) or FlowMatchEuler")
        return sigmas, [float(t) for t in scheduler.timesteps]

    def model_time(self, sigma: float) -> float:
        return sigma * self.num_train_timesteps

    def step(self, out: torch.Tensor, i: int, x: torch.Tensor) -> torch.Tensor:
        """Euler: x + (s_{i+1} - s_i) v."""
        return x + (self.sigmas[i + 1] - self.sigmas[i]) * out

    def renoise(self, x_next: torch.Tensor, i: int, generator: torch.Generator) -> torch.Tensor:
        """From s_{i+1} back up to s_i with fresh noise: a x + b eps, a = (1 - s_i) / (1 - s_{i+1}) and
        b = sqrt(s_i^2 - a^2 s_{i+1}^2), so the clean part and the noise's variance are those of x_{s_i}."""
        s, s_next = self.sigmas[i], self.sigmas[i + 1]
        a = (1 - s) / (1 - s_next)
        b = math.sqrt(max(s * s - (a * s_next) ** 2, 0.0))
        return a * x_next + b * _noise_like(x_next, generator)

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, i: int) -> torch.Tensor:
        s = self.sigmas[i]
        return (1 - s) * x0 + s * noise

    def sdedit_start(self, strength: float) -> int:
        """The first sampling step whose sigma is at or below `strength`."""
        return next((i for i, s in enumerate(self.sigmas[:-1]) if s <= strength), self.steps - 1)

    def inversion(self, inversion_steps: int, keep: list[int], solver: str | None = None) -> InversionPlan:
        """The flow ODE run backwards from s = 0 up the `inversion_steps`-step grid to the noisiest kept step:
        `euler` (x + h v(x, s), one pass a step) or `midpoint` (x + h v(x + h/2 v(x, s), s + h/2), two passes:
        the explicit midpoint of RF-Solver, second order). Raises ConfigError when a kept step's sigma is not
        on the inversion grid."""
        solver = solver or "euler"
        if solver not in FLOW_SOLVERS:
            raise ConfigError(f"flow inversion solver must be one of {', '.join(FLOW_SOLVERS)}, got {solver!r}")
        fine = self.sigmas if inversion_steps == self.steps else self._grid(inversion_steps)[0]
        up = fine[::-1]                                           # 0, ..., s_max
        wanted = {}
        for i in keep:
            j = min(range(len(up)), key=lambda k: abs(up[k] - self.sigmas[i]))
            if abs(up[j] - self.sigmas[i]) > 1e-5:
                raise ConfigError(f"{inversion_steps} inversion steps do not reach sampling step {i} (sigma "
                                  f"{self.sigmas[i]:.4f}); use a multiple of the sampling steps for "
                                  f"--inversion-steps")
            wanted[j] = i
        top = max(wanted)
        up = up[:top + 1]

        def step(predict: PredictFn, x: torch.Tensor, j: int) -> torch.Tensor:
            s, h = up[j], up[j + 1] - up[j]
            v = predict(x, self.model_time(s))
            if solver == "midpoint":
                v = predict(x + 0.5 * h * v, self.model_time(s + 0.5 * h))
            return x + h * v

        # inversion step j goes from up[j] to up[j + 1]; the latent of sampling step keep lies at up[j + 1]
        return InversionPlan(times=[self.model_time(s) for s in up[:-1]],
                             keep={j - 1: i for j, i in wanted.items() if j > 0}, step=step,
                             passes_per_step=2 if solver == "midpoint" else 1)


SCHEDULES = {"ddim": DDIMSchedule, "flow": FlowSchedule}


def make_schedule(kind: str, config: dict, steps: int) -> Schedule:
    return SCHEDULES[kind](config, steps)


__all__ = ["DDIMSchedule", "FlowSchedule", "InversionPlan", "Schedule", "make_schedule", "shift_sigmas",
           "FLOW_SOLVERS"]
