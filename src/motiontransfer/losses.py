"""Guidance losses (paper Sec. 4 and its ablations).

Notation: features f are (B, F, D, h, w) per hooked layer; phi = SMM[f] is (B, F, D), the spatial marginal
mean (paper Eq. 2); Delta[i, j] = phi_i - phi_j is (B, F, F, D) (Eq. 3).

    pairwise_l2      the paper's Eq. 3 loss: sum_i sum_j || Delta[i, j] - Delta~[i, j] ||^2
    pairwise_cosine  the reference code's form: mean over anchors i of (1 - mean_j cos(Delta~[i, j], Delta[i, j]))
                     along D. Pairs i = j (zero vectors) are left out; the reference kept them with cosine 0,
                     which only scales the gradient by (F-1)/F, and Adam is invariant to that.
    smm              ablation "direct SMM": || phi - phi~ ||^2 summed over frames
    features         ablation "full features" and feature inversion (Eq. 1): || f - f~ ||^2, mean over elements

Each is computed per layer and summed over layers with per-layer weights (the reference sums, not averages).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def smm(features: torch.Tensor) -> torch.Tensor:
    """Spatial marginal mean (Eq. 2): (B, F, D, h, w) -> (B, F, D)."""
    return features.mean(dim=(-2, -1))


def pairwise_differences(phi: torch.Tensor) -> torch.Tensor:
    """Delta[b, i, j] = phi[b, i] - phi[b, j]: (B, F, D) -> (B, F, F, D)."""
    return phi[:, :, None, :] - phi[:, None, :, :]


def pairwise_l2(phi_src: torch.Tensor, phi_gen: torch.Tensor) -> torch.Tensor:
    """Eq. 3: sum over frame pairs of the squared L2 distance of the differences, mean over the batch."""
    diff = pairwise_differences(phi_gen) - pairwise_differences(phi_src)
    return diff.pow(2).sum(dim=(1, 2, 3)).mean()


def pairwise_cosine(phi_src: torch.Tensor, phi_gen: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Reference form: 1 - cosine of the difference vectors, averaged over pairs i != j."""
    cos = F.cosine_similarity(pairwise_differences(phi_gen), pairwise_differences(phi_src), dim=-1, eps=eps)
    frames = cos.shape[-1]
    if frames < 2:
        raise ValueError("pairwise losses need at least 2 frames")
    off_diagonal = ~torch.eye(frames, dtype=torch.bool, device=cos.device)
    per_anchor = (cos * off_diagonal).sum(-1) / (frames - 1)                 # (B, F)
    return (1 - per_anchor).mean()


def smm_direct(phi_src: torch.Tensor, phi_gen: torch.Tensor) -> torch.Tensor:
    return (phi_gen - phi_src).pow(2).sum(dim=(1, 2)).mean()


def full_features(f_src: torch.Tensor, f_gen: torch.Tensor) -> torch.Tensor:
    return F.mse_loss(f_gen, f_src)


def motion_loss(kind: str, src: dict[str, torch.Tensor], gen: dict[str, torch.Tensor],
                weights: dict[str, float] | None = None) -> torch.Tensor:
    """Sums the chosen loss over layers. `src`/`gen` map layer names to features (B, F, D, h, w).

    For the SMM-based kinds `src` may hold SMM vectors (B, F, D) already (the source side is reduced once
    per timestep); `gen` always holds full features.
    """
    total = None
    for name, f_gen in gen.items():
        f_src = src[name]
        if kind == "features":
            value = full_features(f_src, f_gen)
        else:
            phi_src = f_src if f_src.dim() == 3 else smm(f_src)
            phi_gen = smm(f_gen)
            if kind == "pairwise_cosine":
                value = pairwise_cosine(phi_src, phi_gen)
            elif kind == "pairwise_l2":
                value = pairwise_l2(phi_src, phi_gen)
            elif kind == "smm":
                value = smm_direct(phi_src, phi_gen)
            else:
                raise ValueError(f"unknown loss {kind!r}")
        value = value * (1.0 if weights is None else weights[name])
        total = value if total is None else total + value
    if total is None:
        raise ValueError("no features to compare")
    return total


def reduce_source(kind: str, features: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """What the loss needs of the source side: SMM vectors for the SMM losses, the features otherwise."""
    if kind == "features":
        return {k: v.detach() for k, v in features.items()}
    return {k: smm(v).detach() for k, v in features.items()}
