"""The benchmark: suite loading, the table and plot, resuming."""

import json

import pytest

from motiontransfer.evaluation import suite as bench
from motiontransfer.errors import ConfigError


@pytest.fixture()
def suite(tiny_model, tmp_path):
    path = tmp_path / "suite.yaml"
    path.write_text(f"""
name: tiny
model: {tiny_model}
text_fidelity: attributes
tracker: flow
options: {{steps: 3, iterations: 2, cache_dir: {tmp_path / 'cache'}}}
cases:
  - {{name: one, world: {{seed: 10000}}, prompt: "a green star on a white background"}}
  - {{name: two, world: {{seed: 10001}}, prompt: "a red circle on a white background"}}
""")
    return path


def test_shipped_shapes_suite_has_enough_cases_with_different_targets():
    from motiontransfer.shapes import world

    spec, cases = bench.load_suite("shapes")
    assert spec["text_fidelity"] == "attributes" and len(cases) >= 20
    for case in cases:
        target = world.parse_caption(case.prompt)
        assert case.frames.shape == (16, 32, 32, 3) and case.centres.shape == (16, 2)
        assert case.box is None           # scored on the whole frame, as every front end scores a pair
        assert target["shape"] and target["colour"] and target["background"]


def test_bench_writes_table_plot_and_resumes(suite, tmp_path, monkeypatch):
    out = tmp_path / "out"
    summary = bench.bench_suite(suite, out, methods=["full", "t2v", "sdedit_0.6"], quiet=True, grid=10)
    assert [r["method"] for r in summary["rows"]] == ["full", "t2v", "sdedit_0.6"]
    assert (out / "scatter.png").stat().st_size > 1000
    table = (out / "results.md").read_text()
    assert "| full | 2 |" in table and "colour %" in table
    records = json.loads((out / "results.json").read_text())["records"]
    assert len(records) == 6
    full = [r for r in records if r["method"] == "full"][0]
    measured = full["motion_fidelity"]                 # a tiny random model's noise may leave too few tracks
    assert (measured is None and "too few tracks" in full["motion_fidelity_reason"]) or -1.0 <= measured <= 1.0
    assert 0.0 <= full["text_fidelity"] <= 1.0
    row = summary["rows"][0]
    assert row["motion_fidelity_not_measured"] == sum(r["motion_fidelity"] is None for r in records
                                                      if r["method"] == "full")
    assert full["counts"]["unet_backward"] > 0
    t2v = [r for r in records if r["method"] == "t2v"][0]
    assert t2v["counts"]["unet_backward"] == 0 and t2v["counts"]["unet_truncated_forward"] == 0

    def fail(*a, **k):
        raise AssertionError("a finished case was run again")

    monkeypatch.setattr(bench, "run_case", fail)
    again = bench.bench_suite(suite, out, methods=["full", "t2v", "sdedit_0.6"], quiet=True, grid=10)
    assert again["rows"] == summary["rows"]


def test_bad_suites_and_methods_are_errors(tmp_path, suite):
    with pytest.raises(ConfigError, match="unknown method"):
        bench.bench_suite(suite, tmp_path / "o", methods=["nope"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("cases: [{prompt: x}]\n")
    with pytest.raises(ConfigError, match="needs `video` or `world`"):
        bench.load_suite(bad)
    bad.write_text("colour: red\ncases: []\n")
    with pytest.raises(ConfigError, match="unknown key"):
        bench.load_suite(bad)


def test_finished_pairs_are_kept_and_ray_tasks_give_the_same_records(suite, tmp_path, monkeypatch):
    ray = pytest.importorskip("ray")
    out = tmp_path / "out"
    here = bench.bench_suite(suite, out, methods=["t2v"], quiet=True, grid=10, limit=1)
    assert [r["case"] for r in here["records"]] == ["one"]
    ray.init(num_cpus=1, object_store_memory=80 * 2**20, include_dashboard=False, log_to_driver=False)
    try:
        # the first case is done and kept; the second runs as a Ray task (the same job function)
        on_ray = bench.bench_suite(suite, out, methods=["t2v"], quiet=True, grid=10, ray_address="local")
        fresh = bench.bench_suite(suite, tmp_path / "fresh", methods=["t2v"], quiet=True, grid=10)
    finally:
        ray.shutdown()
    assert [r["case"] for r in on_ray["records"]] == ["one", "two"] and (out / "results.json").exists()
    for a, b in zip(on_ray["records"], fresh["records"]):
        assert a["motion_fidelity"] == b["motion_fidelity"] and a["text_fidelity"] == b["text_fidelity"]

    def fail(*a, **k):
        raise AssertionError("a finished case was run again")

    monkeypatch.setattr(bench, "run_case", fail)
    summary = bench.bench_suite(suite, out, methods=["t2v"], quiet=True, grid=10)
    assert summary["rows"][0]["cases"] == 2


def test_model_replaces_the_suites_and_sets_the_world_cases_size(tmp_path):
    from conftest import build_tiny_model

    model = build_tiny_model(tmp_path / "m48", size=48)
    spec, cases = bench.load_suite("shapes", model=str(model))
    assert spec["model"] == str(model)
    assert cases[0].frames.shape == (16, 48, 48, 3) and cases[0].centres.max() > 32
    assert bench.case_options(spec, "no_guidance") == {"iterations": 0, "model": str(model)}


def test_a_kept_result_made_otherwise_is_an_error_not_a_mix(suite, tmp_path):
    out = tmp_path / "out"
    bench.bench_suite(suite, out, methods=["t2v"], quiet=True, grid=10, limit=1)
    with pytest.raises(ConfigError, match="other settings"):
        bench.bench_suite(suite, out, methods=["t2v"], quiet=True, grid=10, limit=1, options={"steps": 4})
    with pytest.raises(ConfigError, match="other settings"):
        bench.bench_suite(suite, out, methods=["t2v"], quiet=True, grid=10, limit=1, seed=1)
    again = bench.bench_suite(suite, out, methods=["t2v"], quiet=True, grid=10, limit=1)
    assert again["rows"][0]["cases"] == 1


def test_options_override_the_suite_and_methods_override_them(suite, tmp_path, monkeypatch):
    seen = {}

    def record(case, method, spec, seed):
        seen[method] = {**(spec.get("options") or {}), **bench.METHODS[method]}
        raise RuntimeError("stop")

    monkeypatch.setattr(bench, "run_case", record)
    for method in ("full", "random_init"):
        with pytest.raises(RuntimeError):
            bench.bench_suite(suite, tmp_path / method, methods=[method], quiet=True, options={"init": "lf", "steps": 4})
    assert seen["full"]["init"] == "lf" and seen["full"]["steps"] == 4 and seen["full"]["iterations"] == 2
    assert seen["random_init"]["init"] == "random"


def test_cli_reads_options():
    import argparse

    from motiontransfer.cli import parse_key_value as _option

    assert _option("guidance_window=[0, 0.2]") == ("guidance_window", [0, 0.2])
    assert _option("init=lf") == ("init", "lf")
    with pytest.raises(argparse.ArgumentTypeError):
        _option("init")
