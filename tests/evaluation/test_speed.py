"""The speed benchmark on a tiny random model: each run in a fresh process, the ratio and the frame sweep."""

from motiontransfer.evaluation import speed


def test_perf_benchmark_reports_the_ratio_and_a_frame_sweep(tiny_model, tmp_path):
    summary = speed.bench_speed(tmp_path / "perf", seeds=1, frames=(4, 8), pair_frames=4, model=str(tiny_model),
                                quiet=True)
    assert summary["speedup"] > 1.0                         # 999-step inversion and restart cost more
    ref = [r for r in summary["runs"] if r["preset"] == "reference"][0]
    ours = [r for r in summary["runs"] if r["preset"] == "default"][0]
    assert ref["counts"]["unet_forward"] > 10 * ours["counts"]["unet_forward"] / 2
    assert [s["frames"] for s in summary["sweep"]] == [4, 8]
    assert "speed-up" in (tmp_path / "perf" / "perf.md").read_text()
    assert (tmp_path / "perf" / "perf.md").read_text() == speed.perf_table(summary)
