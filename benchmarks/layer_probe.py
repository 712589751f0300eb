"""Which layers' (UNet3D) or blocks' (Wan) SMM tells motion apart: the guidance loss of the ideal result against
wrong ones.

    OMP_NUM_THREADS=1 python benchmarks/layer_probe.py [--model PATH] [--pairs 8] [--seed 1]
        [--steps 50 --at 1 7 13] [--layers NAME ...] [--json runs/probe.json]

For each validation pair (`shapes.report.transfer_pairs`, pair seed 1 as in `init_sweep.py`) the world renders
the source clip and four clips in the target's look (shape, colour): `ideal` (the source's motion exactly: what
a perfect transfer returns), `shifted` (the ideal clip moved by a quarter of the frame, where the object stays
inside: right motion, wrong place), `static` (the target object resting where the source starts) and `other`
(the next pair's motion). Each clip is encoded and noised to each step `--at` of a `--steps`-step schedule (the
model's own: DDIM's timesteps 961, 841, 721 by default for the UNet3D family; the flow sigmas there for Wan)
(`--noise`: independent noise per
clip, as a random init's latent shares none with the source's; the source's noise, as the inverted init's does;
or the source's low frequencies, as LF init's does), one pass gives the hooked layers' features (source prompt "" for the
source, the target prompt for the others, as the transfer does), and the guidance loss (`--loss`, the
default's) compares the source's SMM with each clip's. A layer suits the guidance where the ideal clip's loss is
below the others': the table gives, per layer, the mean losses and how often the ideal clip wins against each
wrong one (over pairs and timesteps). Nothing is optimised; it reads forward passes only.
"""

import argparse
import dataclasses
import json
from pathlib import Path

import numpy as np
import torch
from motiontransfer.features import FeatureHooks
from motiontransfer.initialization import lf_init
from motiontransfer.losses import motion_loss, reduce_source
from motiontransfer.models import load_model
from motiontransfer.shapes import world
from motiontransfer.shapes.report import transfer_pairs, world_light

VARIANTS = ("ideal", "shifted", "static", "other")


def candidate_layers(model) -> list[str]:
    """Wan: every transformer block. UNet3D: every block's residual branches (`conv2`, before the skip-add),
    temporal convolutions, attentions and up-samplers, in the order `named_modules` lists them."""
    if model.family == "wan":
        return [f"blocks.{i}" for i in range(len(model.transformer.blocks))]
    out = []
    for name, _ in model.unet.named_modules():
        parts = name.split(".")
        if parts[0] not in ("down_blocks", "mid_block", "up_blocks"):
            continue
        tail = parts[2:] if parts[0] != "mid_block" else parts[1:]
        if (len(tail) == 3 and tail[0] == "resnets" and tail[2] == "conv2") or \
                (len(tail) == 2 and tail[0] in ("temp_convs", "attentions", "temp_attentions", "upsamplers")):
            out.append(name)
    return out


def shift_frames(clip: world.Clip, size: int) -> np.ndarray | None:
    """The clip's object translated by a quarter of the frame over the same background (the first of right,
    left, down, up that keeps the object inside), or None when no such shift exists."""
    ys, xs = np.nonzero(clip.masks.any(axis=0))
    if len(xs) == 0:
        return None
    background = np.rint(world.background_image(clip.params, size))       # as `world.render` rounds it
    step = size // 4
    for dx, dy in ((step, 0), (-step, 0), (0, step), (0, -step)):
        if 0 <= xs.min() + dx and xs.max() + dx < size and 0 <= ys.min() + dy and ys.max() + dy < size:
            offset = clip.frames - background                          # the object over its background
            moved = np.zeros_like(offset)
            h, w = size - abs(dy), size - abs(dx)
            sy, sx, ty, tx = max(0, -dy), max(0, -dx), max(0, dy), max(0, dx)
            moved[:, ty:ty + h, tx:tx + w] = offset[:, sy:sy + h, sx:sx + w]
            return (background + moved).clip(0, 255).astype(np.uint8)
    return None


def with_texture(clip: world.Clip, kind: str, amplitude: float, rng: np.random.Generator,
                 size: int, frames: int) -> world.Clip:
    """The clip re-rendered on a textured background (`kind` gradient or noise, random angle or seed)."""
    params = dataclasses.replace(clip.params, texture=kind, texture_amplitude=amplitude,
                                 texture_angle=float(rng.uniform(0, 2 * np.pi)), texture_seed=int(rng.integers(2 ** 31)))
    return world.render(params, size, frames)


def variant_clips(pairs, size: int, frames: int, light: float = 0.0) -> list[dict]:
    """Each pair's source and its four variants, every clip under the world's light of strength `light`. The
    variants are drawn unlit and lit last, so the shifted object is lit where it has moved to."""
    unlit = [dataclasses.replace(clip.params, light=0.0) for clip, _ in pairs]
    out = []
    for i, (_, target) in enumerate(pairs):
        clip = world.render(unlit[i], size, frames)
        look = {"shape": target["shape"], "colour": target["colour"]}
        ideal = world.render(dataclasses.replace(clip.params, **look), size, frames)
        start = clip.centres[0] / size
        static = world.render(dataclasses.replace(clip.params, **look, motion="linear", x0=float(start[0]),
                                                  y0=float(start[1]), dx=0.0, dy=0.0), size, frames)
        other = world.render(dataclasses.replace(unlit[(i + 1) % len(pairs)], **look, background=clip.params.background,
                                                 texture=clip.params.texture,
                                                 texture_amplitude=clip.params.texture_amplitude,
                                                 texture_angle=clip.params.texture_angle,
                                                 texture_seed=clip.params.texture_seed), size, frames)
        variants = {"source": clip.frames, "ideal": ideal.frames, "shifted": shift_frames(ideal, size),
                    "static": static.frames, "other": other.frames}
        out.append({k: None if v is None else world.apply_light(v, light) for k, v in variants.items()}
                   | {"prompt": target["prompt"]})
    return out


def variant_noise(kind: str, src_noise: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    if kind == "shared":
        return src_noise
    own = torch.randn(src_noise.shape, generator=generator)
    if kind == "independent":
        return own
    if kind.startswith("lf") and kind[2:].isdigit():
        return lf_init(src_noise, own, int(kind[2:]))
    raise SystemExit(f"--noise: unknown kind {kind!r}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None)
    parser.add_argument("--pairs", type=int, default=8)
    parser.add_argument("--seed", type=int, default=1, help="pair seed (the quality report uses 0)")
    parser.add_argument("--steps", type=int, default=50, help="the schedule's step count (50)")
    parser.add_argument("--at", type=int, nargs="+", default=[1, 7, 13],
                        help="step indices of that schedule to noise to (1 7 13: DDIM's t = 961 841 721)")
    parser.add_argument("--layers", nargs="+", default=None, help="default: every candidate layer")
    parser.add_argument("--loss", default="pairwise_cosine")
    parser.add_argument("--noise", default="independent",
                        help="the other clips' noise: independent, shared (the source's: the inverted init's "
                             "analogue) or lfN (the source's low frequencies at factor N, Eq. 4's analogue)")
    parser.add_argument("--texture", default="plain", choices=world.TEXTURES,
                        help="re-render every source on this background pattern (a static scene)")
    parser.add_argument("--texture-amplitude", type=float, default=16.0, help="grey levels (training: 8 to 16)")
    parser.add_argument("--light", type=float, default=None,
                        help="light every clip with the world's fixed light (`world.apply_light`) of this strength; "
                             "default: the model's own (0 for a model of an unlit world)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    torch.manual_seed(0)
    model = load_model(args.model, device="cpu")
    size, frames = model.defaults.width, model.defaults.frames
    layers = args.layers or candidate_layers(model)
    defaults = model.default_layers
    schedule = model.schedule(args.steps)
    times = [schedule.timesteps[i] for i in args.at]
    pairs = transfer_pairs(args.pairs, args.seed, size, frames)
    if args.texture != "plain":
        rng = np.random.default_rng(args.seed)
        pairs = [(with_texture(clip, args.texture, args.texture_amplitude, rng, size, frames), target)
                 for clip, target in pairs]
    light = world_light(args.model) if args.light is None else args.light
    clips = variant_clips(pairs, size, frames, light)
    source_cond = model.encode_prompts([""])
    losses = {name: {v: [] for v in VARIANTS} for name in layers}      # [pair x timestep] per variant
    generator = torch.Generator().manual_seed(args.seed)
    with FeatureHooks(model.denoiser, layers, stop_early=True) as hooks, torch.no_grad():
        for i, c in enumerate(clips):
            cond = model.encode_prompts([c["prompt"]])
            src_x0 = model.encode_frames(c["source"])                 # each clip encoded once, noised per timestep
            x0 = {v: None if c[v] is None else model.encode_frames(c[v]) for v in VARIANTS}
            for step, t in zip(args.at, times):
                def feats(latent, prompt_cond, noise):
                    return model.features(hooks, schedule.add_noise(latent, noise, step), t, prompt_cond)
                src_noise = torch.randn(src_x0.shape, generator=generator)
                src = reduce_source(args.loss, feats(src_x0, source_cond, src_noise))
                for v in VARIANTS:
                    if x0[v] is None:
                        for name in layers:
                            losses[name][v].append(float("nan"))
                        continue
                    gen = feats(x0[v], cond, variant_noise(args.noise, src_noise, generator))
                    for name in layers:
                        losses[name][v].append(float(motion_loss(args.loss, {name: src[name]}, {name: gen[name]})))
            print(f"pair {i + 1}/{len(clips)} done", flush=True)
    print(f"\n{args.pairs} pairs (seed {args.seed}) x steps {args.at} of {args.steps} (model times "
          f"{[round(float(t), 1) for t in times]}), loss {args.loss}, "
          f"noise {args.noise}, texture {args.texture}, light {light}; "
          f"model {model.path}")
    print(f"{'layer':36s} {'res':>5s}  " + "  ".join(f"{v:>7s}" for v in VARIANTS) +
          "   ideal wins vs shifted / static / other")
    summary = {}
    with FeatureHooks(model.denoiser, layers, stop_early=False) as hooks, torch.no_grad():
        x = model.encode_frames(clips[0]["source"])
        shapes = {k: tuple(f.shape[-2:]) for k, f in model.features(hooks, x, times[0], source_cond).items()}
    for name in layers:
        arr = {v: np.array(losses[name][v]) for v in VARIANTS}
        wins = {v: float(np.nanmean((arr["ideal"] < arr[v])[~np.isnan(arr[v])])) for v in VARIANTS[1:]}
        means = {v: float(np.nanmean(arr[v])) for v in VARIANTS}
        summary[name] = {"resolution": shapes[name], "mean_loss": means, "ideal_wins": wins,
                         "default": name in defaults}
        mark = "*" if name in defaults else " "
        print(f"{name:35s}{mark} {shapes[name][0]:2d}x{shapes[name][1]:<2d}  " +
              "  ".join(f"{means[v]:7.3f}" for v in VARIANTS) +
              "   " + " / ".join(f"{wins[v]:.2f}" for v in VARIANTS[1:]))
    print("* the model's default layers")
    hooked, by_timestep = [n for n in defaults if n in layers], {}
    if hooked:          # the guidance's own loss: summed over the default layers, per timestep
        total = {v: sum(np.array(losses[n][v]) for n in hooked).reshape(len(clips), len(args.at))
                 for v in VARIANTS}
        print(f"\nthe default layers' summed loss by timestep (ideal wins vs shifted / static / other)")
        for k, t in enumerate(times):
            wins = [float(np.nanmean((total["ideal"][:, k] < total[v][:, k])[~np.isnan(total[v][:, k])]))
                    for v in VARIANTS[1:]]
            by_timestep[round(float(t), 1)] = wins
            print(f"step {args.at[k]:3d} (t={float(t):6.1f})  " + " / ".join(f"{w:.2f}" for w in wins))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "layers": summary,
                                         "default_layers_by_timestep": by_timestep},
                                        indent=1))


if __name__ == "__main__":
    main()
