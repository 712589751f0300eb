"""DDIM inversion: exact round trip with an x-independent noise model, kept timesteps, the cache."""

import json

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


SHAPE = (1, 4, 2, 4, 4)
EXPECT = {"timesteps": [961, 981], "shape": SHAPE, "dtype": torch.float32}


def test_cache_round_trip_and_keys(tmp_path):
    cache = InversionCache(tmp_path)
    k1 = cache.key("frames", "model", {"source_prompt": "", "steps": 50})
    assert k1 == cache.key("frames", "model", {"steps": 50, "source_prompt": ""})
    assert k1 != cache.key("frames", "model", {"source_prompt": "a car", "steps": 50})
    assert k1 != cache.key("frames", "other-model", {"source_prompt": "", "steps": 50})
    assert cache.load(k1, **EXPECT) is None
    latents = {981: torch.randn(SHAPE), 961: torch.randn(SHAPE)}
    cache.save(k1, latents)
    back = cache.load(k1, **EXPECT)
    assert set(back) == {981, 961} and torch.equal(back[961], latents[961])
    assert cache.load(k1, **{**EXPECT, "timesteps": [961]}) is not None      # more than asked is fine
    assert [p.name for p in tmp_path.iterdir()] == [f"{k1}.safetensors"]
    cache.path(k1).write_bytes(b"damaged")
    assert cache.load(k1, **EXPECT) is None


def tampered(cache, key, latents, meta_change=None):
    """Write `latents` under `key` as a foreign writer would: with the metadata `save` gives, changed."""
    from safetensors.torch import save_file

    from motiontransfer.inversion import FORMAT, latents_checksum

    meta = {"format": FORMAT, "key": key, "timesteps": json.dumps(sorted(latents)),
            "shape": json.dumps(list(next(iter(latents.values())).shape)),
            "dtype": str(next(iter(latents.values())).dtype), "sha256": latents_checksum(latents)}
    meta.update(meta_change or {})
    save_file({str(t): v for t, v in latents.items()}, cache.path(key), metadata=meta)


@pytest.mark.parametrize("case", ["wrong shape", "wrong dtype", "nan", "missing timestep", "bad checksum",
                                  "no metadata", "other key"])
def test_a_cache_entry_holding_anything_else_is_recomputed_with_a_warning(tmp_path, caplog, case):
    from safetensors.torch import save_file

    cache = InversionCache(tmp_path)
    key = cache.key("frames", "model", {})
    good = {981: torch.randn(SHAPE), 961: torch.randn(SHAPE)}
    if case == "wrong shape":
        tampered(cache, key, {t: torch.zeros(1, 4, 2, 16, 16) for t in good})
    elif case == "wrong dtype":
        tampered(cache, key, {t: v.half() for t, v in good.items()})
    elif case == "nan":
        tampered(cache, key, {t: torch.full(SHAPE, float("nan")) for t in good})
    elif case == "missing timestep":
        tampered(cache, key, {981: good[981]})
    elif case == "bad checksum":
        tampered(cache, key, good, {"sha256": "0" * 64})
    elif case == "no metadata":
        save_file({str(t): v for t, v in good.items()}, cache.path(key))
    else:
        tampered(cache, key, good, {"key": "another"})
    with caplog.at_level("WARNING"):
        assert cache.load(key, **EXPECT) is None
    assert "recomputing" in caplog.text


def test_cache_list_and_clear(tmp_path):
    import os
    import time

    cache = InversionCache(tmp_path)
    small = {981: torch.zeros(1, 4, 2, 4, 4)}
    big = {981: torch.zeros(1, 4, 16, 32, 32)}
    cache.save("old", small)
    cache.save("big", big)
    cache.save("new", small)
    week_ago = time.time() - 7 * 86400
    os.utime(cache.path("old"), (week_ago, week_ago))
    (tmp_path / ".x.safetensors.tmp-1-ab.safetensors").write_bytes(b"half")
    os.utime(tmp_path / ".x.safetensors.tmp-1-ab.safetensors", (week_ago, week_ago))
    entries = cache.entries()
    assert len(entries) == 4 and sum(e.temporary for e in entries) == 1
    removed = cache.clear(older_than_days=1)
    assert {e.path.name for e in removed} == {"old.safetensors", ".x.safetensors.tmp-1-ab.safetensors"}
    assert [e.path.name for e in cache.clear(larger_than_mb=0.1)] == ["big.safetensors"]
    assert [e.path.name for e in cache.clear()] == ["new.safetensors"] and cache.entries() == []


def test_cache_command_lists_and_clears(tmp_path, capsys):
    from motiontransfer import cli

    cache = InversionCache(tmp_path)
    cache.save("a", {981: torch.zeros(SHAPE)})
    assert cli.main(["cache", "--cache-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "a.safetensors" in out and "1 entries" in out and str(tmp_path) in out
    assert cli.main(["cache", "--cache-dir", str(tmp_path), "--older-than", "1"]) == 2
    assert "--clear" in capsys.readouterr().err
    assert cli.main(["cache", "--cache-dir", str(tmp_path), "--clear"]) == 0
    assert "removed 1 entries" in capsys.readouterr().out and cache.entries() == []


def test_saving_removes_temporaries_that_interrupted_writes_left(tmp_path):
    import os
    import time

    cache = InversionCache(tmp_path)
    stale, fresh = tmp_path / ".a.safetensors.tmp-1-aa.safetensors", tmp_path / ".b.safetensors.tmp-2-bb.safetensors"
    stale.write_bytes(b"half")
    fresh.write_bytes(b"being written")
    os.utime(stale, (time.time() - 7200, time.time() - 7200))
    cache.save("c", {981: torch.zeros(SHAPE)})
    assert not stale.exists() and fresh.exists()
