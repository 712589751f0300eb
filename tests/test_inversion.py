"""DDIM inversion: exact round trip with an x-independent noise model, kept timesteps, the cache."""

import pytest
import torch

from motiontransfer.errors import ConfigError
from motiontransfer.inversion import InversionCache, ddim_invert, sampling_timesteps
from motiontransfer.sampling import guided_sample

from conftest import SCHEDULER


def stub_eps(x, t):
    """A noise model that ignores x: DDIM inversion is then exactly invertible."""
    g = torch.Generator().manual_seed(int(t))
    return torch.randn(x.shape, generator=g)


def test_sampling_timesteps_are_zeroscopes():
    ts = sampling_timesteps(SCHEDULER, 50)
    assert ts[:3] == [981, 961, 941] and ts[-1] == 1 and len(ts) == 50


@pytest.mark.parametrize("inversion_steps", [50, 999])
def test_inversion_then_sampling_reconstructs(inversion_steps):
    x0 = torch.randn(1, 4, 3, 8, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    ts = sampling_timesteps(SCHEDULER, 50)
    kept = ddim_invert(lambda x, t: stub_eps(x, t).double(), x0, SCHEDULER, inversion_steps, ts, progress=False)
    assert sorted(kept) == sorted(ts)
    if inversion_steps == 50:
        back, _ = guided_sample(lambda x, t: stub_eps(x, t).double(), kept[ts[0]], SCHEDULER, 50, progress=False)
        torch.testing.assert_close(back, x0, rtol=0, atol=1e-8)


def test_inversion_keeps_only_what_is_asked_and_stops_early():
    x0 = torch.zeros(1, 4, 2, 4, 4)
    calls = []
    kept = ddim_invert(lambda x, t: calls.append(t) or torch.zeros_like(x), x0, SCHEDULER, 50, [981, 501],
                       progress=False)
    assert sorted(kept) == [501, 981]
    assert calls[-1] == 981 and len(calls) == 50
    calls.clear()
    ddim_invert(lambda x, t: calls.append(t) or torch.zeros_like(x), x0, SCHEDULER, 50, [201], progress=False)
    assert calls[-1] == 201 and len(calls) == 11


def test_misaligned_inversion_steps_are_an_error():
    with pytest.raises(ConfigError, match="multiple"):
        ddim_invert(lambda x, t: x, torch.zeros(1, 4, 2, 4, 4), SCHEDULER, 75, [981], progress=False)


def test_cache_round_trip_and_keys(tmp_path):
    cache = InversionCache(tmp_path)
    k1 = cache.key("frames", "model", {"source_prompt": "", "steps": 50})
    assert k1 == cache.key("frames", "model", {"steps": 50, "source_prompt": ""})
    assert k1 != cache.key("frames", "model", {"source_prompt": "a car", "steps": 50})
    assert k1 != cache.key("frames", "other-model", {"source_prompt": "", "steps": 50})
    assert cache.load(k1) is None
    latents = {981: torch.randn(1, 4, 2, 4, 4), 961: torch.randn(1, 4, 2, 4, 4)}
    cache.save(k1, latents)
    back = cache.load(k1)
    assert set(back) == {981, 961} and torch.equal(back[961], latents[961])
    assert [p.name for p in tmp_path.iterdir()] == [f"{k1}.safetensors"]
    cache.path(k1).write_bytes(b"damaged")
    assert cache.load(k1) is None
