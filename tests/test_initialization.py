"""Initial latents: the low-pass filter and Eq. 4."""

import pytest
import torch

from motiontransfer.initialization import initial_latent, lf_init, low_pass, upsample


def _x(seed, shape=(1, 4, 3, 16, 16)):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def test_low_pass_keeps_constants_and_removes_high_frequencies():
    c = torch.full((1, 4, 2, 16, 16), 0.7)
    torch.testing.assert_close(low_pass(c, 4), c)
    checker = (torch.arange(16)[:, None] + torch.arange(16)[None, :]) % 2 * 2.0 - 1.0
    x = checker.expand(1, 4, 2, 16, 16)
    assert low_pass(x, 4).abs().max() < 0.2
    assert torch.equal(low_pass(x, 1), x)


def test_lf_init_takes_low_frequencies_from_x_T_and_high_from_noise():
    # an inverted latent keeps the video's layout: strong low frequencies (here a smooth field) plus noise
    smooth = torch.nn.functional.interpolate(_x(3, (1, 12, 4, 4)), size=(16, 16), mode="bilinear")
    x_T, eps = smooth.reshape(1, 4, 3, 16, 16) + 0.3 * _x(0), _x(1)
    init = lf_init(x_T, eps, 4)
    torch.testing.assert_close(init, low_pass(x_T, 4) + eps - low_pass(eps, 4))
    torch.testing.assert_close(lf_init(eps, eps, 4), eps)          # same source for both: unchanged

    def coarse(v):                                                 # 4x4 block means: the low frequencies
        return torch.nn.functional.avg_pool2d(v[0].flatten(0, 1), 4).flatten()

    def corr(a, b):
        return torch.corrcoef(torch.stack([a.flatten(), b.flatten()]))[0, 1].item()

    assert corr(coarse(init), coarse(x_T)) > 0.6 > abs(corr(coarse(init), coarse(eps)))
    fine_init, fine_eps = init - low_pass(init, 4), eps - low_pass(eps, 4)
    assert corr(fine_init, fine_eps) > 0.8


def test_initial_latent_kinds_and_determinism():
    x_T = _x(2)
    shape = tuple(x_T.shape)
    a = initial_latent("lf", x_T, shape, torch.Generator().manual_seed(5))
    b = initial_latent("lf", x_T, shape, torch.Generator().manual_seed(5))
    assert torch.equal(a, b)
    assert torch.equal(initial_latent("inverted", x_T, shape, torch.Generator()), x_T)
    r = initial_latent("random", None, shape, torch.Generator().manual_seed(5))
    assert r.shape == shape and abs(r.std().item() - 1) < 0.1
    with pytest.raises(ValueError):
        initial_latent("lf", None, shape, torch.Generator())


def test_reference_up_sampling_is_the_reference_quirk_and_lowpass_a_ramp():
    row = torch.tensor([[[[0.0, 1.0]]]])                                       # (N, C, h, w) = (1, 1, 1, 2)
    ramp = torch.arange(8) / 7
    torch.testing.assert_close(upsample(row, (1, 8))[0, 0, 0], ramp)
    # the reference's: antialias with align_corners shifts toward the top-left and never reaches 1
    torch.testing.assert_close(upsample(row, (1, 8), "reference")[0, 0, 0],
                               torch.tensor([0, 0, 0, 0, 1 / 7, 2 / 7, 3 / 7, 4 / 7]))
    with pytest.raises(ValueError, match="unknown LF filter"):
        upsample(row, (1, 8), "bicubic")


def test_reference_filter_keeps_constants_and_differs_from_the_low_pass():
    c = torch.full((1, 4, 2, 16, 16), 0.7)
    torch.testing.assert_close(low_pass(c, 4, "reference"), c)
    x_T, eps = _x(2), _x(3)
    ours, theirs = lf_init(x_T, eps, 4), lf_init(x_T, eps, 4, "reference")
    assert torch.equal(ours, lf_init(x_T, eps, 4, "lowpass"))              # the default is the low-pass
    torch.testing.assert_close(theirs, low_pass(x_T, 4, "reference") + eps - low_pass(eps, 4, "reference"))
    assert (theirs - ours).norm() / ours.norm() > 0.05
    g = torch.Generator()
    assert torch.equal(initial_latent("lf", x_T, tuple(x_T.shape), g.manual_seed(5), 4, "reference"),
                       lf_init(x_T, torch.randn(tuple(x_T.shape), generator=g.manual_seed(5)), 4, "reference"))
