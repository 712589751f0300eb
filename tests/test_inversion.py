"""DDIM inversion: exact round trip with an x-independent noise model, kept steps, the cache."""

import json

import pytest
import torch

from motiontransfer.errors import ConfigError
from motiontransfer.inversion import InversionCache, invert_latent
from motiontransfer.sampling import guided_sample
from motiontransfer.schedules import DDIMSchedule

from conftest import SCHEDULER


def stub_eps(x, t):
    """A noise model that ignores x: DDIM inversion is then exactly invertible."""
    g = torch.Generator().manual_seed(int(t))
    return torch.randn(x.shape, generator=g)


def test_sampling_timesteps_are_zeroscopes():
    ts = DDIMSchedule(SCHEDULER, 50).timesteps
    assert ts[:3] == [981, 961, 941] and ts[-1] == 1 and len(ts) == 50


@pytest.mark.parametrize("inversion_steps", [50, 999])
def test_inversion_then_sampling_reconstructs(inversion_steps):
    x0 = torch.randn(1, 4, 3, 8, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    schedule = DDIMSchedule(SCHEDULER, 50)
    steps = list(range(50))
    kept = invert_latent(lambda x, t: stub_eps(x, t).double(), x0, schedule, inversion_steps, steps, progress=False)
    assert sorted(kept) == steps
    if inversion_steps == 50:
        back, _ = guided_sample(lambda x, t: stub_eps(x, t).double(), kept[0], schedule, progress=False)
        torch.testing.assert_close(back, x0, rtol=0, atol=1e-8)


def test_inversion_keeps_only_what_is_asked_and_stops_early():
    x0 = torch.zeros(1, 4, 2, 4, 4)
    calls = []
    schedule = DDIMSchedule(SCHEDULER, 50)                      # step 0: t = 981, step 24: 501, step 39: 201
    kept = invert_latent(lambda x, t: calls.append(t) or torch.zeros_like(x), x0, schedule, 50, [0, 24],
                         progress=False)
    assert sorted(kept) == [0, 24]
    assert calls[-1] == 981 and len(calls) == 50
    calls.clear()
    invert_latent(lambda x, t: calls.append(t) or torch.zeros_like(x), x0, schedule, 50, [39], progress=False)
    assert calls[-1] == 201 and len(calls) == 11


def test_misaligned_inversion_steps_are_an_error():
    with pytest.raises(ConfigError, match="multiple"):
        invert_latent(lambda x, t: x, torch.zeros(1, 4, 2, 4, 4), DDIMSchedule(SCHEDULER, 50), 75, [0],
                      progress=False)


SHAPE = (1, 4, 2, 4, 4)
EXPECT = {"steps": [1, 0], "shape": SHAPE, "dtype": torch.float32}


def test_cache_round_trip_and_keys(tmp_path):
    cache = InversionCache(tmp_path)
    k1 = cache.key("frames", "model", {"source_prompt": "", "steps": 50})
    assert k1 == cache.key("frames", "model", {"steps": 50, "source_prompt": ""})
    assert k1 != cache.key("frames", "model", {"source_prompt": "a car", "steps": 50})
    assert k1 != cache.key("frames", "other-model", {"source_prompt": "", "steps": 50})
    assert cache.load(k1, **EXPECT) is None
    latents = {0: torch.randn(SHAPE), 1: torch.randn(SHAPE)}
    cache.save(k1, latents)
    back = cache.load(k1, **EXPECT)
    assert set(back) == {0, 1} and torch.equal(back[1], latents[1])
    assert cache.load(k1, **{**EXPECT, "steps": [1]}) is not None      # more than asked is fine
    assert [p.name for p in tmp_path.iterdir()] == [f"{k1}.safetensors"]
    cache.path(k1).write_bytes(b"damaged")
    assert cache.load(k1, **EXPECT) is None


def tampered(cache, key, latents, meta_change=None):
    """Write `latents` under `key` as a foreign writer would: with the metadata `save` gives, changed."""
    from safetensors.torch import save_file

    from motiontransfer.inversion import FORMAT, latents_checksum

    meta = {"format": FORMAT, "key": key, "steps": json.dumps(sorted(latents)),
            "shape": json.dumps(list(next(iter(latents.values())).shape)),
            "dtype": str(next(iter(latents.values())).dtype), "sha256": latents_checksum(latents)}
    meta.update(meta_change or {})
    save_file({str(t): v for t, v in latents.items()}, cache.path(key), metadata=meta)


@pytest.mark.parametrize("case", ["wrong shape", "wrong dtype", "nan", "missing step", "bad checksum",
                                  "no metadata", "other key"])
def test_a_cache_entry_holding_anything_else_is_recomputed_with_a_warning(tmp_path, caplog, case):
    from safetensors.torch import save_file

    cache = InversionCache(tmp_path)
    key = cache.key("frames", "model", {})
    good = {0: torch.randn(SHAPE), 1: torch.randn(SHAPE)}
    if case == "wrong shape":
        tampered(cache, key, {t: torch.zeros(1, 4, 2, 16, 16) for t in good})
    elif case == "wrong dtype":
        tampered(cache, key, {t: v.half() for t, v in good.items()})
    elif case == "nan":
        tampered(cache, key, {t: torch.full(SHAPE, float("nan")) for t in good})
    elif case == "missing step":
        tampered(cache, key, {0: good[0]})
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
    small = {0: torch.zeros(1, 4, 2, 4, 4)}
    big = {0: torch.zeros(1, 4, 16, 32, 32)}
    cache.save("old", small)
    cache.save("big", big)
    cache.save("new", small)
    week_ago = time.time() - 7 * 86400
    os.utime(cache.path("old"), (week_ago, week_ago))
    half = f".{'ab' * 12}.safetensors.tmp-1-ab.safetensors"           # what an interrupted write of a key leaves
    (tmp_path / half).write_bytes(b"half")
    os.utime(tmp_path / half, (week_ago, week_ago))
    entries = cache.entries()
    assert len(entries) == 4 and sum(e.temporary for e in entries) == 1
    removed = cache.clear(older_than_days=1)
    assert {e.path.name for e in removed} == {"old.safetensors", half}
    assert [e.path.name for e in cache.clear(larger_than_mb=0.1)] == ["big.safetensors"]
    assert [e.path.name for e in cache.clear()] == ["new.safetensors"] and cache.entries() == []


def test_cache_command_lists_and_clears(tmp_path, capsys):
    from motiontransfer import cli

    cache = InversionCache(tmp_path)
    cache.save("a", {0: torch.zeros(SHAPE)})
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
    stale, fresh = (tmp_path / f".{c * 24}.safetensors.tmp-{i}-{c * 2}.safetensors" for i, c in ((1, "a"), (2, "b")))
    stale.write_bytes(b"half")
    fresh.write_bytes(b"being written")
    os.utime(stale, (time.time() - 7200, time.time() - 7200))
    cache.save("c", {0: torch.zeros(SHAPE)})
    assert not stale.exists() and fresh.exists()


def test_clearing_the_cache_removes_only_what_it_wrote(tmp_path):
    """A model's weights, or anything else, in the cache folder are neither listed nor removed."""
    from safetensors.torch import save_file

    from motiontransfer import cli

    cache = InversionCache(tmp_path)
    cache.save("a" * 24, {0: torch.zeros(SHAPE)})
    save_file({"weight": torch.zeros(2)}, tmp_path / "diffusion_pytorch_model.safetensors")
    (tmp_path / ".model.safetensors.tmp-1-ab.safetensors").write_bytes(b"someone else's")
    (tmp_path / ("b" * 24 + ".safetensors")).write_bytes(b"a damaged entry")
    assert {e.path.name for e in cache.entries()} == {"a" * 24 + ".safetensors", "b" * 24 + ".safetensors"}
    assert cli.main(["cache", "--cache-dir", str(tmp_path), "--clear"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == [".model.safetensors.tmp-1-ab.safetensors",
                                                          "diffusion_pytorch_model.safetensors"]
