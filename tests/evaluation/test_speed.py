"""The speed benchmark on a tiny random model: each run in a fresh process, three rows and both ratios, the
prediction from the pass counts, the frame sweep."""

import pytest

from motiontransfer.config import TransferConfig
from motiontransfer.errors import ConfigError
from motiontransfer.evaluation import speed
from motiontransfer.tools.passes import predicted_flops

# stand-ins for tools.passes.pass_flops at ZeroScope size (counting those takes half a minute; tests/tools has it)
FLOPS = {"checkpoint": {"unet_forward": 20, "unet_truncated_forward": 12, "unet_backward": 23},
         "none": {"unet_forward": 20, "unet_truncated_forward": 12, "unet_backward": 13}}


def test_perf_benchmark_reports_three_rows_both_ratios_and_a_frame_sweep(tiny_model, tmp_path):
    summary = speed.bench_speed(tmp_path / "perf", seeds=1, frames=(4, 8), pair_frames=4, model=str(tiny_model),
                                pass_flops=FLOPS, quiet=True)
    rows = summary["rows"]
    assert list(rows) == ["reference", "default", "plain"]
    assert [r["row"] for r in summary["runs"]] == ["reference", "default", "plain", "default", "default"]
    ref, ours, plain = (rows[name]["counts"] for name in ("reference", "default", "plain"))
    assert ref["unet_forward"] > 10 * ours["unet_forward"] / 2
    # plain sampling: one CFG pass (batch 2) per default step, nothing else
    assert plain == {"unet_forward": 2 * TransferConfig().steps, "unet_truncated_forward": 0, "unet_backward": 0}
    assert rows["plain"]["inversion_s"] == 0.0 and ours["unet_backward"] > 0
    assert summary["speedup"] == pytest.approx(summary["reference_s"] / summary["default_s"])
    assert summary["default_over_plain"] == pytest.approx(summary["default_s"] / summary["plain_s"])
    assert summary["speedup"] > 1.0 and summary["default_over_plain"] > 1.0
    for mode, flops in FLOPS.items():
        p = summary["predicted"][mode]
        assert p["speedup"] == pytest.approx(predicted_flops(ref, flops) / predicted_flops(ours, flops))
        assert p["default_over_plain"] == pytest.approx(predicted_flops(ours, flops) / predicted_flops(plain, flops))
        assert p["over_default"]["default"] == 1.0 and p["speedup"] > 1.0 and p["default_over_plain"] > 1.0
    assert [s["frames"] for s in summary["sweep"]] == [4, 8]
    table = (tmp_path / "perf" / "perf.md").read_text()
    assert table == speed.perf_table(summary)
    assert "predicted at ZeroScope size (24 frames, 576x320" in table and "default/plain" in table
    assert f"reference/default {summary['speedup']:.2f}x" in table


@pytest.mark.parametrize("rows", [("reference", "plain"), ("default", "fastest"), ("default", "default")])
def test_rows_are_presets_or_plain_with_default_among_them(rows, tmp_path):
    with pytest.raises(ConfigError, match="rows must be"):
        speed.bench_speed(tmp_path, rows=rows)
