"""Hashes of the frames of 10 transfer configurations and of text-to-video and analyze on the shipped model: run on
two checkouts (PYTHONPATH=.../src) to show that a refactor changes no result, bit for bit.

    OMP_NUM_THREADS=1 python benchmarks/frame_hashes.py OUT.json
"""

import hashlib
import json
import sys
import tempfile

import numpy as np

from motiontransfer.pipeline import analyze, text_to_video, transfer_many
from motiontransfer.shapes import world

clip = world.sample_clip(np.random.default_rng(10_000), size=32, frames=16)
frames = clip.frames
cache = tempfile.mkdtemp()
common = dict(output_dir=False, quiet=True, fps=8, cache_dir=cache, seed=0)
runs = {
    "demo_like": dict(reuse_every=1),
    "default": dict(),
    "lf_reuse3": dict(init="lf"),
    "sdedit": dict(init="sdedit", iterations=0),
    "random_guided": dict(init="random", steps=10),
    "restart": dict(restart=True, steps=10),
    "reference": dict(preset="reference", steps=10, inversion_steps=100),
    "early_stop": dict(early_stop=0.05, steps=10),
    "l2": dict(loss="pairwise_l2", steps=10),
    "cached_again": dict(reuse_every=1),
}
out = {}
for name, opts in runs.items():
    r = transfer_many(frames, ["a green star on a black background"], **common, **opts)[0]
    rec = {"frames": hashlib.sha256(r.frames.tobytes()).hexdigest()[:16], "counts": r.counts,
           "losses": [s.loss_after for s in r.history.guided][:3]}
    out[name] = rec
    print(name, rec, flush=True)
r = text_to_video("a red circle on a white background", seed=3, steps=10)
out["t2v"] = hashlib.sha256(r.frames.tobytes()).hexdigest()[:16]
rs = analyze(frames, target="smm", seeds=[0], output_dir=tempfile.mkdtemp() + "/a", quiet=True, fps=8, steps=10,
             cache_dir=cache)
out["analyze"] = hashlib.sha256(rs[0].frames.tobytes()).hexdigest()[:16]
print(json.dumps(out, indent=1))
json.dump(out, open(sys.argv[1], "w"), indent=1)
