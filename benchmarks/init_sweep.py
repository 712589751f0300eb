"""Which initialisation suits a model: LF init (Eq. 4) at factors 4 and 2 against the unfiltered inverted latent.

    OMP_NUM_THREADS=1 python benchmarks/init_sweep.py [--model PATH] [--pairs 6]

On held-out pairs of the shapes world (a source clip; a target prompt of another shape and colour on the same
background) it runs `motiontransfer.transfer` once per setting and prints, per setting, the mean velocity
cosine against the source's true centres, the mean centre error in pixels, and the shares of results with the
target colour and shape (the world's classifier). The shipped model's `method_defaults` come from this.
"""

import argparse

import numpy as np

import motiontransfer
from motiontransfer import world
from motiontransfer.demo import target_prompt
from motiontransfer.shapes_eval import classify_video, object_track, trajectory_agreement

SETTINGS = {"lf4": {"init": "lf", "lf_factor": 4}, "lf2": {"init": "lf", "lf_factor": 2}, "inverted": {"init": "inverted"}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None)
    parser.add_argument("--pairs", type=int, default=6)
    args = parser.parse_args()
    rows = {name: [] for name in SETTINGS}
    for seed in range(10_100, 10_100 + args.pairs):
        clip = world.sample_clip(np.random.default_rng(seed), size=32, frames=16)
        prompt = target_prompt(clip.params)
        target = world.parse_caption(prompt)
        for name, options in SETTINGS.items():
            r = motiontransfer.transfer(clip.frames, prompt, model=args.model, seed=0, output_dir=False, quiet=True,
                                        **options)
            seen = classify_video(r.frames)
            agree = trajectory_agreement(clip.centres, object_track(r.frames))
            rows[name].append([agree["velocity_cosine"], agree["centre_error"], seen["colour"] == target["colour"],
                               seen["shape"] == target["shape"]])
            print(seed, name, np.round(np.array(rows[name][-1], float), 2), flush=True)
    print("setting   velocity cos  centre error px  target colour  target shape")
    for name, values in rows.items():
        v = np.nanmean(np.array(values, float), axis=0)
        print(f"{name:9s} {v[0]:12.2f} {v[1]:16.2f} {100 * v[2]:13.0f}% {100 * v[3]:12.0f}%")


if __name__ == "__main__":
    main()
