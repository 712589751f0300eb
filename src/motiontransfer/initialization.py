"""Initial latents for guided sampling (paper Sec. 4, "Initialization", Eq. 4), and SDEdit's start (a baseline).

    x~_T = LF(x_T) + (eps_0 - LF(eps_0)),   eps_0 ~ N(0, I)

LF is a per-frame spatial low-pass: bilinear down-sampling by `factor` (align_corners, with antialiasing) and
bilinear up-sampling back (align_corners). x~_T keeps the coarse layout of the inverted noise x_T and takes its
high frequencies from fresh noise. Latents are (B, C, F, h, w).

Two up-samplings (`LF_FILTERS`):

    lowpass    plain bilinear up-sampling: LF is a low-pass and keeps the layout where it is (ours, the default)
    reference  the reference implementation's: antialias=True on the up-sampling too. With align_corners, torch
               then shifts the result about a third of a low-resolution pixel toward the top-left (the row
               [0, 1] up-sampled to 8 gives 0, 0, 0, 0, .14, .29, .43, .57 instead of a ramp from 0 to 1).
               A quirk, not a better filter; `--preset reference` uses it to reproduce that code exactly.

SDEdit (Meng et al. 2022), the comparison's baseline, starts instead from the source's clean latent x_0 noised
to the first sampling step at or below `strength` of the full noise (DDIM: strength x T; flow: sigma), and
samples from there (`sdedit_latent`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .config import LF_FILTERS
from .schedules import Schedule


def upsample(frames: torch.Tensor, size: tuple[int, int], lf_filter: str = "lowpass") -> torch.Tensor:
    """LF's up-sampling: (N, C, h', w') -> (N, C, *size), bilinear with align_corners; `reference` adds the
    reference's antialias flag (see the module docstring)."""
    if lf_filter not in LF_FILTERS:
        raise ValueError(f"unknown LF filter {lf_filter!r}; choose one of {', '.join(LF_FILTERS)}")
    return F.interpolate(frames, size=size, mode="bilinear", align_corners=True,
                         antialias=lf_filter == "reference")


def low_pass(x: torch.Tensor, factor: int, lf_filter: str = "lowpass") -> torch.Tensor:
    """LF: (B, C, F, h, w) -> same shape, each frame down by `factor` and back up."""
    if factor <= 1:
        return x
    b, c, f, h, w = x.shape
    frames = x.permute(0, 2, 1, 3, 4).reshape(b * f, c, h, w)
    small = F.interpolate(frames, size=(max(1, h // factor), max(1, w // factor)), mode="bilinear",
                          align_corners=True, antialias=True)
    back = upsample(small, (h, w), lf_filter)
    return back.reshape(b, f, c, h, w).permute(0, 2, 1, 3, 4)


def lf_init(x_T: torch.Tensor, noise: torch.Tensor, factor: int = 4, lf_filter: str = "lowpass") -> torch.Tensor:
    """Eq. 4: the inverted latent's low frequencies plus the noise's high frequencies."""
    return low_pass(x_T, factor, lf_filter) + (noise - low_pass(noise, factor, lf_filter))


def initial_latent(kind: str, x_T: torch.Tensor | None, shape: tuple[int, ...], generator: torch.Generator,
                   factor: int = 4, lf_filter: str = "lowpass") -> torch.Tensor:
    """`lf` (Eq. 4), `random` (eps_0) or `inverted` (x_T unfiltered). Noise is drawn from `generator` on CPU."""
    noise = torch.randn(shape, generator=generator, dtype=torch.float32)
    if kind == "random":
        return noise
    if x_T is None:
        raise ValueError(f"init {kind!r} needs the inverted latent")
    x_T = x_T.float().cpu()
    if kind == "inverted":
        return x_T.clone()
    if kind == "lf":
        return lf_init(x_T, noise, factor, lf_filter)
    raise ValueError(f"unknown init {kind!r}")


def sdedit_latent(x0: torch.Tensor, schedule: Schedule, strength: float,
                  generator: torch.Generator) -> tuple[torch.Tensor, int]:
    """SDEdit's start: x0 (B, C, F, h, w) noised to the first sampling step of `schedule` at or below `strength`
    of the full noise (`Schedule.sdedit_start`), with noise drawn from `generator` on the CPU; returns it and
    that step's index."""
    first = schedule.sdedit_start(strength)
    noise = torch.randn(x0.shape, generator=generator)
    return schedule.add_noise(x0, noise, first), first
