"""Loss properties (paper Eq. 2 and 3, the reference's cosine form, the ablations)."""

import pytest
import torch

from motiontransfer.losses import (full_features, motion_loss, pairwise_cosine, pairwise_differences, pairwise_l2,
                                   smm, smm_direct)


def _feats(seed, shape=(1, 6, 16, 4, 4)):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def test_smm_is_the_spatial_mean():
    f = _feats(0)
    assert smm(f).shape == (1, 6, 16)
    torch.testing.assert_close(smm(f)[0, 2, 3], f[0, 2, 3].mean())


def test_pairwise_differences_are_antisymmetric():
    phi = smm(_feats(1))
    d = pairwise_differences(phi)
    assert d.shape == (1, 6, 6, 16)
    torch.testing.assert_close(d, -d.transpose(1, 2))
    assert d.diagonal(dim1=1, dim2=2).abs().max() == 0


def test_pairwise_losses_ignore_a_constant_appearance_offset():
    """Differences keep how features change over time and drop what is common to all frames."""
    phi = smm(_feats(2))
    shifted = phi + torch.randn(1, 1, 16) * 5
    assert pairwise_l2(phi, shifted) < 1e-8
    assert pairwise_cosine(phi, shifted) < 1e-6
    assert smm_direct(phi, shifted) > 1.0                      # the direct SMM loss does not


def test_cosine_form_is_scale_invariant_and_bounded():
    phi, other = smm(_feats(3)), smm(_feats(4))
    assert pairwise_cosine(phi, 3.0 * phi) < 1e-6
    v = pairwise_cosine(phi, other)
    assert 0.0 < v < 2.0
    assert pairwise_cosine(phi, -phi) == pytest.approx(2.0, abs=1e-5)


def test_time_reversal_is_penalised():
    phi = torch.cumsum(torch.randn(1, 6, 16, generator=torch.Generator().manual_seed(5)), dim=1)
    assert pairwise_cosine(phi, phi.flip(1)) > 0.5
    assert pairwise_l2(phi, phi.flip(1)) > 1.0


def test_identical_frames_give_finite_gradients():
    phi_src = torch.zeros(1, 4, 8)
    f = torch.zeros(1, 4, 8, 2, 2, requires_grad=True)
    loss = motion_loss("pairwise_cosine", {"a": phi_src}, {"a": f})
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(f.grad).all()


def test_layer_weights_and_sum_over_layers():
    src = {"a": _feats(6), "b": _feats(7)}
    gen = {"a": _feats(8), "b": _feats(9)}
    phi = {k: smm(v) for k, v in src.items()}
    la = motion_loss("pairwise_l2", {"a": phi["a"]}, {"a": gen["a"]})
    lb = motion_loss("pairwise_l2", {"b": phi["b"]}, {"b": gen["b"]})
    both = motion_loss("pairwise_l2", phi, gen, {"a": 2.0, "b": 0.5})
    torch.testing.assert_close(both, 2.0 * la + 0.5 * lb)


def test_full_feature_loss_is_zero_only_for_equal_features():
    f = _feats(10)
    assert full_features(f, f) == 0
    assert full_features(f, f + 0.1) > 0
    assert motion_loss("features", {"a": f}, {"a": f + 0.1}) == pytest.approx(0.01, rel=1e-4)


def test_reduced_and_full_source_give_the_same_loss():
    src, gen = _feats(11), _feats(12)
    full = motion_loss("pairwise_cosine", {"a": src}, {"a": gen})
    reduced = motion_loss("pairwise_cosine", {"a": smm(src)}, {"a": gen})
    torch.testing.assert_close(full, reduced)
