"""What still separates `--preset reference` from the reference implementation, measured on the shipped model.

    OMP_NUM_THREADS=1 python benchmarks/reference_gaps.py [--seed 0] [--json runs/reference_gaps.json]

One source clip of the shapes world (the one `motiontransfer bench-speed` uses for this seed, 16 frames of
32x32, its target prompt), transferred with `--preset reference` and the seed: the baseline. Every other row
changes one thing and reports how far its result lies from the baseline: the relative difference of the final
latent, ||x0 - x0_base|| / ||x0_base||, and the mean absolute difference of the decoded frames in 1/255. Runs
are deterministic under the seed (the row `baseline again` checks it).

Rows, in three groups:
- what the preset reproduces since issue 16, switched back one at a time (`lf_filter: lowpass`,
  `vae_encode: mean`, the model's negative prompt "") and all three together (the preset before issue 16);
- what still differs, each done the reference's way here (by patching our functions for this run only):
  `inversion to 999`   the reference inverts to t = 999 and builds its initial latent from x_999: the noise it
                       implies, eps = (x_999 - sqrt(a_999) x0') / sqrt(1 - a_999), put back on x0' at t = 981
                       (before the LF filter), where x0' is a second, independent VAE posterior sample; ours
                       takes x_981 from the inversion. `(same x0)` uses the inverted sample as x0';
  `restart 20 noises`  the reference re-noises from t-20 to t in 20 steps of one beta each, with fresh noise
                       each and betas[t-20 .. t-1] (one index lower than the exact forward process), here drawn
                       from the run's generator; ours draws one noise at the exact level alphas_cumprod[t] /
                       alphas_cumprod[t-20]. `restart level only` keeps our one noise at the reference's level;
  `loss with i = j`    the reference's pairwise cosine averages over all F frames j, the zero pair i = j
                       included (cosine 0), so its loss is 1/F + (F-1)/F x ours and its gradient (F-1)/F x ours;
- for scale: the restart noise from another stream, and another seed for the whole run.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from unittest import mock

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler

from motiontransfer import losses, pipeline, sampling
from motiontransfer.config import TransferConfig
from motiontransfer.evaluation.speed import perf_prompt, source_clip

INVERSION_END = 999          # where the reference's 999-step inversion stops


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, default=0, help="clip and run seed (0)")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    parser.add_argument("--rows", nargs="+", metavar="TEXT", help="only the rows whose name holds one of these")
    args = parser.parse_args()
    seed = args.seed
    clip = source_clip(seed, size=32, frames=16)
    prompt = perf_prompt(clip.params)
    model = pipeline.get_model(TransferConfig())
    schedule = DDIMScheduler.from_config(model.scheduler_config)
    alphas, betas = schedule.alphas_cumprod, schedule.betas
    final = {}
    decode = model.decode_latents

    def capture(latents):                          # the final latent of the current run, before decoding
        final["x0"] = latents.detach().float().cpu()
        return decode(latents)

    model.decode_latents = capture
    cache = tempfile.TemporaryDirectory(prefix="reference-gaps-")
    invert, initial = pipeline.invert_latents, pipeline.initial_latent
    first_t = pipeline.sampling_timesteps(model.scheduler_config, 50)[0]       # 981, where sampling starts

    def invert_to_the_end(model, frames, config, keep, **kwargs):  # also keeps x_999, so every run shares the cache
        return invert(model, frames, config, sorted(set(keep) | {INVERSION_END}), **kwargs)

    def run(patches=(), **options):
        with ExitStack() as stack:
            stack.enter_context(mock.patch.object(pipeline, "invert_latents", invert_to_the_end))
            for target, name, value in patches:
                stack.enter_context(mock.patch.object(target, name, value))
            start = time.perf_counter()
            options = {"seed": seed, **options}
            r = pipeline.transfer(clip.frames, prompt, output_dir=False, quiet=True, preset="reference",
                                  cache_dir=cache.name, **options)
        return {"x0": final["x0"], "frames": r.frames, "seconds": time.perf_counter() - start}

    # --- the reference's initial latent: x_999's noise put back on a VAE sample at t = 981
    def reference_start(second_sample: bool):
        inverted = {}

        def keep_inverted(*a, **k):
            inverted["run"] = invert_to_the_end(*a, **k)
            return inverted["run"]

        def start(kind, x_T, shape, generator, factor, lf_filter):
            cfg = TransferConfig(seed=seed, vae_encode="sample")
            x0 = pipeline.encode_source(model, clip.frames, cfg)            # the sample that was inverted
            if second_sample:
                x0 = model.encode_frames(clip.frames, generator=pipeline.stream_generator(seed, "second sample"))
            x_end = inverted["run"].latents[INVERSION_END]
            a_end, a_first = alphas[INVERSION_END], alphas[first_t]
            eps = (x_end - a_end.sqrt() * x0) / (1 - a_end).sqrt()
            x_T = a_first.sqrt() * x0 + (1 - a_first).sqrt() * eps
            return initial(kind, x_T, shape, generator, factor, lf_filter)

        return [(pipeline, "invert_latents", keep_inverted), (pipeline, "initial_latent", start)]

    # --- the reference's restart: 20 one-beta steps from t-20, betas[t-20 .. t-1]
    ours = sampling.renoise

    def reference_renoise(twenty_noises: bool):
        def renoise(x_prev, alpha_prev, alpha_t, generator):
            prev_t = int((alphas == alpha_prev).nonzero()[0])
            t = int((alphas == alpha_t).nonzero()[0])
            steps = betas[prev_t:prev_t + (t - prev_t)]
            if not twenty_noises:
                level = torch.prod(1 - steps)
                return ours(x_prev, torch.tensor(1.0), level, generator)
            x = x_prev
            for beta in steps:
                noise = torch.randn(x.shape, generator=generator, dtype=torch.float32).to(x.device, x.dtype)
                x = (1 - beta).sqrt().to(x.dtype) * x + beta.sqrt().to(x.dtype) * noise
            return x
        return [(sampling, "renoise", renoise)]

    def other_restart_stream():
        other = torch.Generator().manual_seed(seed + 10_000)
        return [(sampling, "renoise", lambda x, a, b, generator: ours(x, a, b, other))]

    # --- the reference's loss: the mean over all j, the pair i = j (cosine 0) included
    def reference_cosine(phi_src, phi_gen, eps=1e-8):
        cos = F.cosine_similarity(losses.pairwise_differences(phi_gen), losses.pairwise_differences(phi_src),
                                  dim=-1, eps=eps)
        return (1 - cos.mean(-1)).mean()

    rows = {
        "baseline again": {},
        "lf_filter: lowpass": {"options": {"lf_filter": "lowpass"}},
        "vae_encode: mean": {"options": {"vae_encode": "mean"}},
        "negative prompt of the model": {"options": {"negative_prompt": ""}},
        "all three (the preset before issue 16)": {"options": {"lf_filter": "lowpass", "vae_encode": "mean",
                                                               "negative_prompt": ""}},
        "inversion to 999": {"patches": reference_start(True)},
        "inversion to 999 (same x0)": {"patches": reference_start(False)},
        "restart 20 noises": {"patches": reference_renoise(True)},
        "restart level only": {"patches": reference_renoise(False)},
        "loss with i = j": {"patches": [(losses, "pairwise_cosine", reference_cosine)]},
        "scale: restart noise from another stream": {"patches": other_restart_stream()},
        "scale: seed + 1": {"options": {"seed": seed + 1}},
    }
    if args.rows:
        rows = {name: spec for name, spec in rows.items() if any(text in name for text in args.rows)}
    base = run()
    print(f"clip seed {seed}, prompt {prompt!r}; baseline {base['seconds']:.1f} s (with the inversion)")
    print(f"| variant | final latent, relative difference | frames, mean abs difference (1/255) |")
    print("|---|---|---|")
    results = []
    for name, spec in rows.items():
        r = run(spec.get("patches", ()), **spec.get("options", {}))
        rel = float((r["x0"] - base["x0"]).norm() / base["x0"].norm())
        mad = float(np.abs(r["frames"].astype(np.float64) - base["frames"]).mean())
        results.append({"variant": name, "latent_relative": rel, "pixels_mad_255": mad, "seconds": r["seconds"]})
        print(f"| {name} | {rel:.3g} | {mad:.3g} |", flush=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"seed": seed, "prompt": prompt, "torch": torch.__version__,
                                         "rows": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
