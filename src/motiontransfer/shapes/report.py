"""The shipped shapes model's quality report, measured through the library's public functions.

Plain text-to-video on held-out prompts, the VAE's round trip on held-out world clips, and motion transfer on
held-out world clips against the text-to-video baseline (`evaluate_model`); what a video shows is judged by the
attribute classifier (`classifier`) and where its object goes by segmentation (`tracking`). `format_report`
prints it as a table (`motiontransfer report`).
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from ..errors import ConfigError
from . import world
from .classifier import (ATTRIBUTES, classifier_record, classify_frames, classify_video, load_classifier,
                         shipped_classifier_path)
from .tracking import coherence, segment_object, trajectory_agreement

# Seed offsets (+ the report's seed). The generator trains on world.make_dataset(..., seed=0).
PROMPT_SEED, PAIR_SEED, REAL_SEED, VAE_SEED = 1000, 2000, 3000, 4000


def _nanmean(values) -> float:
    values = np.asarray([np.nan if v is None else v for v in values], np.float64)
    return float(np.nanmean(values)) if np.isfinite(values).any() else float("nan")


def _nanmedian(values) -> float:
    values = np.asarray(values, np.float64)
    return float(np.nanmedian(values)) if np.isfinite(values).any() else float("nan")


def _rate(flags) -> float:
    flags = list(flags)
    return float(np.mean(flags)) if flags else float("nan")


def held_out_prompts(n: int, seed: int) -> list[dict]:
    """n prompts from `default_rng(seed + PROMPT_SEED)`: shape uniform, (colour, background) uniform over the
    allowed pairs (rejection of FORBIDDEN ones)."""
    rng = np.random.default_rng(seed + PROMPT_SEED)
    colours, backgrounds = list(world.COLOURS), list(world.BACKGROUNDS)
    out = []
    while len(out) < n:
        shape = world.SHAPES[int(rng.integers(len(world.SHAPES)))]
        colour = colours[int(rng.integers(len(colours)))]
        background = backgrounds[int(rng.integers(len(backgrounds)))]
        if (colour, background) in world.FORBIDDEN:
            continue
        out.append({"shape": shape, "colour": colour, "background": background,
                    "prompt": world.plain_caption(colour, shape, background)})
    return out


def world_light(model: str | Path | None = None) -> float:
    """The strength of the world's light (`world.apply_light`) that the shapes model at `model` (None: the shipped
    one) was trained under, from its `motiontransfer.json`; 0 for an unlit world or a model trained elsewhere."""
    from ..models import resolve_model_path

    record = resolve_model_path(model) / "motiontransfer.json"
    if not record.exists():
        return 0.0
    return float((json.loads(record.read_text()).get("train_config") or {}).get("light", 0.0))


def transfer_pairs(pairs: int, seed: int, size: int, frames: int, light: float = 0.0) -> list[tuple[world.Clip, dict]]:
    """Source clips and target prompts from `default_rng(seed + PAIR_SEED)`: each target has another shape and
    another colour than its source, on the source's background (a colour allowed there), uniformly drawn. The
    sources are lit with strength `light` (the model's world); the light takes no draw, so the pairs are the same."""
    rng = np.random.default_rng(seed + PAIR_SEED)
    out = []
    for _ in range(pairs):
        clip = world.sample_clip(rng, size, frames, motion_phrase_prob=0.0, light=light)
        p = clip.params
        shapes, colours = world.other_looks(p)
        target = {"shape": shapes[int(rng.integers(len(shapes)))], "colour": colours[int(rng.integers(len(colours)))],
                  "background": p.background}
        target["prompt"] = world.plain_caption(target["colour"], target["shape"], target["background"])
        out.append((clip, target))
    return out


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * math.log10(255.0 ** 2 / mse)


def _judge(frames: np.ndarray, target: dict, source: world.Clip | None = None) -> dict:
    """Attributes, coherence and (given the source clip) trajectory agreement with its true centres and the
    motion fidelity against its frames (`evaluation.metrics.score_videos`, the scorer of every front end)."""
    from ..evaluation.metrics import score_videos

    seg = segment_object(frames)
    seen = classify_video(frames)
    out = {a: seen[a] for a in ATTRIBUTES}
    out.update({f"{a}_ok": seen[a] == target[a] for a in ATTRIBUTES})
    out.update(coherence(frames, segmentation=seg))
    if source is not None:
        out.update(trajectory_agreement(source.centres.astype(np.float64), seg["centres"]))
        out["motion_fidelity"] = score_videos(source.frames, frames)["motion_fidelity"]
    return out


def _summary(items: list[dict]) -> dict:
    return {"n": len(items),
            "motion_fidelity": _nanmean(i["motion_fidelity"] for i in items),
            "motion_fidelity_not_measured": sum(i["motion_fidelity"] is None for i in items),
            "velocity_cosine": _nanmean(i["velocity_cosine"] for i in items),
            "centre_error": _nanmean(i["centre_error"] for i in items),
            "corr_x": _nanmean(i["corr_x"] for i in items), "corr_y": _nanmean(i["corr_y"] for i in items),
            "target_colour": _rate(i["colour_ok"] for i in items),
            "target_shape": _rate(i["shape_ok"] for i in items),
            "target_background": _rate(i["background_ok"] for i in items),
            "one_object": _rate(i["one_object"] for i in items),
            "seconds_per_video": _nanmean(i["seconds"] for i in items)}


def evaluate_model(model: str | None = None, n_prompts: int = 60, seed: int = 0, steps: int = 25,
                   out: str | Path | None = None, *, pairs: int = 20, real_clips: int = 200, vae_clips: int = 20,
                   transfer_steps: int | None = None, progress: bool = True) -> dict:
    """The shapes model's quality bar, measured through the library's public functions.

    text_to_video: `n_prompts` held-out prompts (`held_out_prompts`), one `motiontransfer.text_to_video` each
        (seed = seed + i): the shares of videos classified with the prompted colour, shape, background (and
        all three), with one persistent object, that move; the median max_jump against the same statistic of
        `real_clips` world clips (`default_rng(seed + REAL_SEED)`, the model's frame count and size), and
        their ratio.
    vae: `vae_clips` held-out world clips (seed + VAE_SEED) through `model.encode_frames` / `decode_latents`:
        mean PSNR (dB) per clip, and the classifier's accuracies on original and round-tripped frames.
    transfer: `pairs` source clips and target prompts (`transfer_pairs`: shape and colour differ, same
        background). `motiontransfer.transfer(frames, prompt, output_dir=False, seed=i, steps=steps)` with the
        shipped method defaults (the inversion cache off, so every run pays its inversion) and the baseline
        `motiontransfer.text_to_video(prompt, seed=i, steps=steps)`; for both, against the source's true
        centres: mean velocity cosine, centre error, x/y correlation, shares with the target colour, shape and
        one object, seconds per video, and the mean motion fidelity against the source's frames (`score_videos`;
        one that could not be measured is left out and counted). "source" scores the tracker on the source clips
        themselves.

    Shares are fractions in [0, 1]. Writes the report as JSON to `out` when given.
    """
    from ..config import TransferConfig
    from ..pipeline import get_model, text_to_video, transfer, versions

    wrong = [f"{name} {value} (at least {least})" for name, value, least in
             (("n_prompts", n_prompts, 1), ("pairs", pairs, 0), ("real_clips", real_clips, 1),
              ("vae_clips", vae_clips, 0), ("steps", steps, 1)) if value < least]
    if wrong:
        raise ConfigError(f"report: {', '.join(wrong)}")
    start = time.perf_counter()
    generator = get_model(TransferConfig(model=model))
    size, frames = generator.defaults.width, generator.defaults.frames
    light = world_light(model)                                  # clips as the model's world shows them
    if generator.defaults.height != size:
        raise ValueError(f"the shapes evaluation needs square frames, the model makes "
                         f"{size}x{generator.defaults.height}")
    classifier = load_classifier()
    common = {"model": model, "steps": steps, "quiet": True}
    # transfer and its baseline: the method's defaults (25 steps) unless transfer_steps says otherwise
    pair_options = {"model": model, "quiet": True} | ({"steps": transfer_steps} if transfer_steps else {})

    # text-to-video ------------------------------------------------------------------------------------
    videos = []
    for i, target in enumerate(tqdm(held_out_prompts(n_prompts, seed), desc="text-to-video",
                                    disable=not progress, dynamic_ncols=True)):
        tic = time.perf_counter()
        result = text_to_video(target["prompt"], seed=seed + i, **common)
        item = {"prompt": target["prompt"], "seed": seed + i, "seconds": time.perf_counter() - tic}
        item.update(_judge(result.frames, target))
        videos.append(item)
    real = world.make_dataset(real_clips, seed=seed + REAL_SEED, size=size, frames=frames, light=light)
    real_coherence = [coherence(f) for f in real["frames"]]
    jump, real_jump = _nanmedian([v["max_jump"] for v in videos]), _nanmedian([c["max_jump"] for c in real_coherence])
    t2v = {"n": len(videos),
           "colour_ok": _rate(v["colour_ok"] for v in videos), "shape_ok": _rate(v["shape_ok"] for v in videos),
           "background_ok": _rate(v["background_ok"] for v in videos),
           "all_ok": _rate(v["colour_ok"] and v["shape_ok"] and v["background_ok"] for v in videos),
           "one_object": _rate(v["one_object"] for v in videos), "moves": _rate(v["moves"] for v in videos),
           "max_jump_median": jump, "real_max_jump_median": real_jump,
           "max_jump_ratio": jump / real_jump if real_jump > 0 else float("nan"),
           "real_clips": real_clips, "real_one_object": _rate(c["one_object"] for c in real_coherence),
           "real_moves": _rate(c["moves"] for c in real_coherence),
           "seconds_per_video": _nanmean(v["seconds"] for v in videos), "videos": videos}

    # VAE round trip -----------------------------------------------------------------------------------
    vae = {"clips": vae_clips, "frames": 0}
    if vae_clips:
        data = world.make_dataset(vae_clips, seed=seed + VAE_SEED, size=size, frames=frames, light=light)
        originals = data["frames"]                                             # (N, F, H, W, 3)
        rounds = np.stack([generator.decode_latents(generator.encode_frames(clip)) for clip in originals])
        psnrs = [_psnr(a, b) for a, b in zip(originals, rounds)]
        labels = {a: np.repeat(data[a], frames) for a in ATTRIBUTES}
        flat = originals.reshape(-1, *originals.shape[2:])
        p_orig = classify_frames(flat, classifier)
        p_round = classify_frames(rounds.reshape(-1, *rounds.shape[2:]), classifier)
        vae.update({"frames": int(len(flat)), "psnr": _nanmean(psnrs), "psnr_min": float(np.min(psnrs))})
        for a in ATTRIBUTES:
            vae[f"{a}_acc_original"] = float((p_orig[a].argmax(1) == labels[a]).mean())
            vae[f"{a}_acc_roundtrip"] = float((p_round[a].argmax(1) == labels[a]).mean())

    # motion transfer ----------------------------------------------------------------------------------
    method, baseline, source, items = [], [], [], []
    for i, (clip, target) in enumerate(tqdm(transfer_pairs(pairs, seed, size, frames, light), desc="transfer",
                                            disable=not progress, dynamic_ncols=True)):
        p = clip.params
        src_target = {"shape": p.shape, "colour": p.colour, "background": p.background}
        s = _judge(clip.frames, src_target, clip) | {"seconds": float("nan")}
        tic = time.perf_counter()
        result = transfer(clip.frames, target["prompt"], output_dir=False, seed=i, use_cache=False,
                          **pair_options)
        m = _judge(result.frames, target, clip) | {"seconds": time.perf_counter() - tic}
        tic = time.perf_counter()
        result = text_to_video(target["prompt"], seed=i, **pair_options)
        b = _judge(result.frames, target, clip) | {"seconds": time.perf_counter() - tic}
        source.append(s)
        method.append(m)
        baseline.append(b)
        items.append({"seed": i, "source_caption": clip.caption, "source_motion": p.motion,
                      "prompt": target["prompt"], "transfer": m, "baseline": b, "source": s})
    transfer_report = {"pairs": pairs, "target_background": "the source's",
                       "transfer": _summary(method) if method else {},
                       "baseline": _summary(baseline) if baseline else {},
                       "source": _summary(source) if source else {}, "items": items}

    report = {
        "settings": {"model": str(generator.path), "model_identity": generator.identity, "n_prompts": n_prompts,
                     "pairs": pairs, "steps": steps, "transfer_steps": transfer_steps or "method default",
                     "seed": seed, "frames": frames, "size": size,
                     "real_clips": real_clips, "vae_clips": vae_clips, "device": str(generator.device),
                     "dtype": str(generator.dtype), "classifier": str(shipped_classifier_path()),
                     "classifier_held_out_clean": classifier_record()["held_out"]["clean"],
                     "transfer_options": {"use_cache": False}, "versions": versions(),
                     "seconds": round(time.perf_counter() - start, 1)},
        "text_to_video": t2v, "vae": vae, "transfer": transfer_report,
    }
    if out is not None:
        from ..video import atomic_write_text

        atomic_write_text(out, json.dumps(_jsonable(report), indent=2) + "\n")
    return report


def _jsonable(value):
    """Numpy scalars and arrays to plain Python; NaN and infinity to None (strict JSON)."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, (np.bool_, bool)):
        return bool(value)
    if isinstance(value, (np.integer, int)):
        return int(value)
    if isinstance(value, (np.floating, float)):
        return float(value) if math.isfinite(value) else None
    return value


def format_report(report: dict) -> str:
    """A readable table of `evaluate_model`'s report."""
    def pct(v):
        return "   n/a" if v is None or not math.isfinite(v) else f"{100 * v:5.1f}%"

    def num(v, digits=2):
        return "n/a" if v is None or not math.isfinite(v) else f"{v:.{digits}f}"

    s, t, v, tr = report["settings"], report["text_to_video"], report["vae"], report["transfer"]
    lines = [f"shapes model report: {s['model']} ({s['model_identity']})",
             f"  {s['frames']} frames {s['size']}x{s['size']}, {s['steps']} steps, seed {s['seed']}, {s['device']}, "
             f"{num(s['seconds'], 0)} s in all",
             "",
             f"text-to-video ({t['n']} held-out prompts, {num(t['seconds_per_video'], 1)} s a video)",
             f"  prompted colour        {pct(t['colour_ok'])}",
             f"  prompted shape         {pct(t['shape_ok'])}",
             f"  prompted background    {pct(t['background_ok'])}",
             f"  all three              {pct(t['all_ok'])}",
             f"  one persistent object  {pct(t['one_object'])}   (real clips {pct(t['real_one_object'])})",
             f"  moves                  {pct(t['moves'])}   (real clips {pct(t['real_moves'])})",
             f"  max jump, median px    {num(t['max_jump_median'])}   (real clips {num(t['real_max_jump_median'])},"
             f" ratio {num(t['max_jump_ratio'])})"]
    if v.get("frames"):
        lines += ["", f"VAE round trip ({v['clips']} held-out clips, {v['frames']} frames)",
                  f"  PSNR dB                {num(v['psnr'], 1)}   (worst clip {num(v['psnr_min'], 1)})",
                  "  classifier accuracy    original  round trip"]
        lines += [f"    {a:<20} {pct(v[f'{a}_acc_original'])}    {pct(v[f'{a}_acc_roundtrip'])}"
                  for a in ATTRIBUTES]
    if tr["pairs"]:
        m, b, src = tr["transfer"], tr["baseline"], tr["source"]
        rows = [("motion fidelity", "motion_fidelity", num),
                ("velocity cosine", "velocity_cosine", num), ("centre error px", "centre_error", num),
                ("x correlation", "corr_x", num), ("y correlation", "corr_y", num),
                ("target colour", "target_colour", pct), ("target shape", "target_shape", pct),
                ("one object", "one_object", pct), ("seconds a video", "seconds_per_video", num)]
        lines += ["", f"motion transfer ({tr['pairs']} held-out pairs: another shape and colour on "
                      f"{tr['target_background']} background)",
                  f"  {'':<22} {'transfer':>10} {'text-to-video':>14} {'source (check)':>15}"]
        for label, key, fmt in rows:
            source_value = "" if key.startswith("target") or key == "seconds_per_video" else fmt(src[key])
            lines.append(f"  {label:<22} {fmt(m[key]):>10} {fmt(b[key]):>14} {source_value:>15}")
        skipped = [f"{name} {part['motion_fidelity_not_measured']}" for name, part in
                   (("transfer", m), ("text-to-video", b)) if part.get("motion_fidelity_not_measured")]
        if skipped:
            lines.append(f"  motion fidelity not measured (left out of its mean): {', '.join(skipped)}")
    return "\n".join(lines)


__all__ = ["evaluate_model", "format_report", "held_out_prompts", "transfer_pairs"]
