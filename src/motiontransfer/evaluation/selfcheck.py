"""The self-check after a transfer: the result's motion fidelity against its source, and a warning when it is low.

The CLI (`transfer`, `demo`, `batch`) and the web UI call `check_result` on every result: it scores the result
with `metrics.score_videos` (the defaults every front end uses), stores the check in the result's record and in
its run.json, and `describe` gives the lines to show. LOW_SCORE sits under every perfect transfer of the
calibration and over the mean of its reversed, mirrored and held-still ones (README, "How far the
motion-fidelity score can be trusted": those average 0.12 or less at 32 and 128 px, the lowest perfect transfer
scores 0.31; a path shifted a quarter of the clip ahead keeps some of the motion and averages 0.27 to 0.30).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from .metrics import score_videos

logger = logging.getLogger(__name__)

LOW_SCORE = 0.25
ADVICE = ("try --region X,Y,W,H around the moving object (the UI's crop), another model (--model), or "
          "--reuse-every 1 (every guided step optimised)")


def self_check(source: np.ndarray, result: np.ndarray) -> dict:
    """{"motion_fidelity": float or None, "reason": None or why not measured, "low": bool or None,
    "low_below": LOW_SCORE, "motion_fidelity_one_sided", "tracker", "grid", "tracks_original", "tracks_edited"} of
    `result` against `source` (`metrics.score_videos` with its defaults)."""
    scores = score_videos(source, result)
    value = scores["motion_fidelity"]
    return {"motion_fidelity": value, "reason": scores["reason"], "low": None if value is None else value < LOW_SCORE,
            "low_below": LOW_SCORE, **{k: scores[k] for k in ("motion_fidelity_one_sided", "tracker", "grid",
                                                            "tracks_original", "tracks_edited")}}


def describe(check: dict) -> list[str]:
    """One line with the score (or why there is none), and a warning line when it is low."""
    value = check["motion_fidelity"]
    if value is None:
        return [f"motion fidelity against the source: {check['reason']}"]
    lines = [f"motion fidelity against the source: {value:.2f}"]
    if check["low"]:
        lines.append(f"warning: motion fidelity {value:.2f} is low (below {check['low_below']:g}): the result does "
                     f"not move the way the source does; {ADVICE}")
    return lines


def check_result(result) -> dict:
    """`self_check` of a `pipeline.TransferResult` (its `source` and `frames`), kept in `result.record` under
    "self_check" and written into the result folder's run.json when there is one. Returns the check."""
    from ..video import atomic_write_text

    check = self_check(result.source, result.frames)
    result.record["self_check"] = check
    folder = getattr(result, "output_dir", None)
    if folder is not None and (Path(folder) / "run.json").is_file():
        atomic_write_text(Path(folder) / "run.json", json.dumps(result.record, indent=2))
    for line in describe(check):
        logger.debug(line)
    return check


__all__ = ["ADVICE", "LOW_SCORE", "check_result", "describe", "self_check"]
