"""How long the motion-fidelity score takes on one pair: two 16-frame 128x128 world clips, scored once.

    OMP_NUM_THREADS=1 PYTHONPATH=src farm-bench -n 5 --pin 0 -- python benchmarks/score_speed.py \
        --vs "python benchmarks/score_speed.py --skip-score"

The pair is a world clip and its perfect transfer (`evaluation.calibration.world_case`, report seed); the second
command renders the same clips without scoring them, so the difference of the two is the scoring
(`metrics.score_videos` with its defaults: both videos tracked, then matched). Prints the score.
"""

from __future__ import annotations

import argparse

from motiontransfer.evaluation.calibration import REPORT_SEED, world_case
from motiontransfer.evaluation.metrics import score_videos


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=128, help="frame side in px (128)")
    parser.add_argument("--skip-score", action="store_true", help="render the pair only: the baseline")
    args = parser.parse_args()
    case = world_case(REPORT_SEED, args.size)
    if not args.skip_score:
        print(score_videos(case["source"], case["perfect"])["motion_fidelity"])


if __name__ == "__main__":
    main()
