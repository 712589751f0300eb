"""Evaluation of the shipped shapes text-to-video model: what a video shows, and how its object moves.

Everything here judges frames from the outside, independently of the generator:

Attributes (`classify_video`, `attribute_fidelity`)
    A small CNN (`AttributeClassifier`) reads single 32x32 RGB frames and predicts the object's shape, its
    colour and the background, with one head per attribute over `world.SHAPES`, `world.COLOURS` and
    `world.BACKGROUNDS`. It is trained on world frames only (never on model output), with augmentations
    standing in for a small diffusion model's artefacts: Gaussian blur, Gaussian noise, a per-channel colour
    shift and a contrast change (`Augmentation`). A video's attribute is the arg-max of the per-frame
    probabilities averaged over its frames. Shipped weights: `weights/classifier/`.

Object and motion (`segment_object`, `object_track`, `coherence`, `trajectory_agreement`)
    The background colour of a video is the per-channel median of its border pixels (all frames). A pixel's
    *distance* is its Euclidean RGB distance to that colour; the video's *contrast* is the 90th percentile of
    the distances at or above `FG_MIN_DISTANCE` (the object's colour against the background, robust to its
    anti-aliased edge). A pixel is foreground when its distance exceeds

        threshold = max(FG_MIN_DISTANCE, FG_FRACTION * contrast)         (FG_FRACTION = 0.5)

    i.e. when it is at least half covered by the object, as the world's ground-truth masks are, and never
    closer to the background than 40 grey levels (noise). Per frame, the 8-connected components of the
    foreground are found; the object is the largest. Its centre is the coverage-weighted centroid over the
    component grown by one pixel, the coverage of a pixel being min(1, distance / contrast), so the centre
    estimates the object's area centroid, as `world` defines it, below the pixel grid.

Quality report (`evaluate_model`, CLI `report`)
    Plain text-to-video on held-out prompts, the VAE's round trip on held-out world clips, and motion transfer
    on held-out world clips against the text-to-video baseline. See `evaluate_model`.

Coordinates are pixels in the convention of `motiontransfer.shapes.world`: x right, y down, pixel (row i, column j)
has its centre at (j + 0.5, i + 0.5). Frames are np.ndarray (F, H, W, 3) uint8 RGB throughout.

Command line:

    python -m motiontransfer.shapes_eval train-classifier [--out DIR] [--steps N] [--seed S]
    python -m motiontransfer.shapes_eval report [--model PATH] [--n 60] [--pairs 20] [--steps 25] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import time
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from importlib import resources
from pathlib import Path

import cv2
import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from . import world

logger = logging.getLogger(__name__)

__all__ = [
    "ATTRIBUTES",
    "AttributeClassifier",
    "Augmentation",
    "ClassifierConfig",
    "attribute_fidelity",
    "classify_frames",
    "classify_video",
    "coherence",
    "evaluate_model",
    "format_report",
    "load_classifier",
    "object_track",
    "segment_object",
    "train_classifier",
    "trajectory_agreement",
]

ATTRIBUTES = ("shape", "colour", "background")
CLASSES: dict[str, tuple[str, ...]] = {"shape": tuple(world.SHAPES), "colour": tuple(world.COLOURS),
                                       "background": tuple(world.BACKGROUNDS)}
INPUT_SIZE = 32                     # px, the classifier's frame side; other sizes are resized (INTER_AREA)

# Segmentation. Distances are Euclidean in RGB, 0..441 grey levels.
FG_MIN_DISTANCE = 40.0              # a pixel nearer than this to the background is never foreground (noise)
FG_FRACTION = 0.5                   # foreground: distance > FG_FRACTION * contrast (pixel >= half covered)
CONTRAST_PERCENTILE = 90.0          # contrast: this percentile of the distances >= FG_MIN_DISTANCE
REFERENCE_AREA = 32 * 32            # px; the pixel thresholds below are for 32x32 and scale with frame area
MIN_COMPONENT_AREA = 3              # px at 32x32: smaller components are not counted as objects
MIN_OBJECT_AREA = 8                 # px at 32x32: the world's smallest object covers about 20 px

# Coherence and motion
ONE_OBJECT_SHARE = 0.8              # the largest component holds at least this share of the foreground
AREA_FACTOR = 3.0                   # object areas stay within this factor of their median
MOVES_MIN_PATH = 1.0                # px: a video whose object travels less than this in total is still
STILL_STEP = 0.25                   # px: a frame step shorter than this in both tracks is skipped (see below)

# Seed offsets. The generator trains on world.make_dataset(..., seed=0); everything here draws from other
# streams. Classifier data lives far from the report's streams (report seed + 1000 .. + 4000).
CLASSIFIER_TRAIN_SEED = 1_000_000   # + seed: the classifier's training clips
CLASSIFIER_HELD_OUT_SEED = 2_000_000  # + seed: its held-out clips (accuracies in config.json)
PROMPT_SEED, PAIR_SEED, REAL_SEED, VAE_SEED = 1000, 2000, 3000, 4000   # + report seed
CLASSIFIER_CLIP_FRAMES = 16         # frames per world clip drawn for classifier data (the shipped model's)


# ------------------------------------------------------------------------------------------------- classifier

@dataclass(frozen=True)
class ClassifierConfig:
    """Architecture of `AttributeClassifier`: conv blocks (3x3 conv, batch norm, ReLU, 2x2 max pool except after
    the last), then the global mean and max of the last feature map, concatenated, into one linear head per
    attribute."""

    size: int = INPUT_SIZE                      # px, input side
    channels: tuple[int, ...] = (16, 32, 64, 64)  # per conv block; three pools: 32 -> 4 px maps
    classes: dict = field(default_factory=lambda: {k: list(v) for k, v in CLASSES.items()})

    def __post_init__(self):
        object.__setattr__(self, "channels", tuple(int(c) for c in self.channels))
        if not self.channels:
            raise ValueError("need at least one conv block")
        if set(self.classes) != set(ATTRIBUTES):
            raise ValueError(f"classes must name {ATTRIBUTES}, got {sorted(self.classes)}")


class AttributeClassifier(nn.Module):
    """Single frames (B, 3, H, W) float in [-1, 1] -> {attribute: logits (B, K)}."""

    def __init__(self, config: ClassifierConfig):
        super().__init__()
        self.config = config
        layers: list[nn.Module] = []
        c_in = 3
        for i, c in enumerate(config.channels):
            layers += [nn.Conv2d(c_in, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU(inplace=True)]
            if i < len(config.channels) - 1:
                layers.append(nn.MaxPool2d(2))
            c_in = c
        self.body = nn.Sequential(*layers)
        self.heads = nn.ModuleDict({a: nn.Linear(2 * c_in, len(config.classes[a])) for a in ATTRIBUTES})

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        h = self.body(x)                                                     # (B, C, h, w)
        pooled = torch.cat([h.mean(dim=(2, 3)), h.amax(dim=(2, 3))], dim=1)  # (B, 2C)
        return {a: head(pooled) for a, head in self.heads.items()}


def _to_input(frames: np.ndarray | torch.Tensor) -> torch.Tensor:
    """(N, H, W, 3) uint8 (or float 0..255 tensor (N, 3, H, W)) -> (N, 3, H, W) float in [-1, 1]."""
    if isinstance(frames, np.ndarray):
        frames = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float()
    return frames / 127.5 - 1.0


@dataclass(frozen=True)
class Augmentation:
    """Random degradations of frames (B, 3, H, W) float in 0..255, drawn per frame; ranges are (low, high).

    Order: contrast about the frame's mean, a per-channel colour shift, a Gaussian blur, per-pixel Gaussian
    noise, then clipping to 0..255 and rounding (back to 8 bits). A fraction `clean` of frames is left as is.
    """

    blur_sigma: tuple[float, float] = (0.0, 1.2)   # px, Gaussian blur standard deviation
    noise_std: tuple[float, float] = (0.0, 12.0)   # grey levels, per-pixel Gaussian noise
    shift: float = 10.0                            # grey levels, per-channel offset uniform in [-shift, shift]
    contrast: tuple[float, float] = (0.9, 1.1)     # factor about the frame's mean grey level
    clean: float = 0.2                             # fraction of frames left untouched

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        b = x.shape[0]

        def uniform(low: float, high: float, *shape) -> torch.Tensor:
            return low + (high - low) * torch.rand(b, *shape, generator=generator)

        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        y = mean + (x - mean) * uniform(*self.contrast, 1, 1, 1)
        y = y + uniform(-self.shift, self.shift, 3, 1, 1)
        y = gaussian_blur(y, uniform(*self.blur_sigma))
        y = y + torch.randn(y.shape, generator=generator) * uniform(*self.noise_std, 1, 1, 1)
        y = y.clamp(0, 255).round()
        keep = torch.rand(b, generator=generator) < self.clean
        return torch.where(keep[:, None, None, None], x, y)


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor, radius: int = 3) -> torch.Tensor:
    """Separable Gaussian blur with one sigma (px) per frame: x (B, C, H, W), sigma (B,). Reflected borders;
    sigma below 0.05 px leaves the frame unchanged. `radius` 3 covers 2.5 sigma up to sigma 1.2."""
    b, c, h, w = x.shape
    offsets = torch.arange(-radius, radius + 1, dtype=x.dtype)
    s = sigma.clamp(min=0.05)[:, None]
    kernel = torch.exp(-0.5 * (offsets[None] / s) ** 2)
    kernel = torch.where((sigma < 0.05)[:, None], (offsets == 0).to(x.dtype)[None], kernel)
    kernel = (kernel / kernel.sum(dim=1, keepdim=True)).repeat_interleave(c, dim=0)   # (B*C, 2r+1)
    y = x.reshape(1, b * c, h, w)
    y = nn.functional.pad(y, (radius, radius, radius, radius), mode="reflect")
    y = nn.functional.conv2d(y, kernel[:, None, None, :], groups=b * c)               # along x
    y = nn.functional.conv2d(y, kernel[:, None, :, None], groups=b * c)               # along y
    return y.reshape(b, c, h, w)


def _world_frames(clips: int, seed: int, per_clip: int, size: int) -> dict[str, np.ndarray]:
    """`per_clip` random frames of each of `clips` world clips: frames (N, size, size, 3) uint8 and labels (N,)."""
    data = world.make_dataset(clips, seed=seed, size=size, frames=CLASSIFIER_CLIP_FRAMES)
    pick = np.random.default_rng(seed).integers(0, data["frames"].shape[1], size=(clips, per_clip))
    rows = np.repeat(np.arange(clips), per_clip)
    out = {"frames": data["frames"][rows, pick.ravel()]}
    for a in ATTRIBUTES:
        out[a] = np.repeat(data[a], per_clip)
    return out


@torch.no_grad()
def _accuracies(net: AttributeClassifier, frames: torch.Tensor, labels: dict[str, np.ndarray],
                batch: int = 512) -> dict[str, float]:
    """Per-attribute accuracy on frames (N, 3, H, W) float 0..255."""
    net.eval()
    correct = {a: 0 for a in ATTRIBUTES}
    for i in range(0, len(frames), batch):
        logits = net(_to_input(frames[i:i + batch]))
        for a in ATTRIBUTES:
            correct[a] += int((logits[a].argmax(1).numpy() == labels[a][i:i + batch]).sum())
    return {a: correct[a] / len(frames) for a in ATTRIBUTES}


def train_classifier(out_dir: str | Path, seed: int = 0, steps: int = 2500, progress: bool = True, *,
                     batch: int = 128, lr: float = 3e-3, train_clips: int = 6000, frames_per_clip: int = 4,
                     held_out_clips: int = 500, config: ClassifierConfig | None = None,
                     augmentation: Augmentation | None = None) -> dict:
    """Trains the attribute classifier on world frames and writes `model.safetensors` + `config.json`.

    Data: `frames_per_clip` random frames of each of `train_clips` clips from
    `world.make_dataset(seed=CLASSIFIER_TRAIN_SEED + seed)`, horizontally flipped at random (every world shape
    is mirror-symmetric up to rotation) and degraded by `augmentation`. AdamW, cosine learning rate, the sum
    of the three cross-entropies. Held-out accuracies (clean, randomly augmented, and at the strongest blur and
    noise) on clips from `CLASSIFIER_HELD_OUT_SEED + seed` go into config.json. Returns the config written.
    """
    from safetensors.torch import save_file

    config = config or ClassifierConfig()
    augmentation = augmentation or Augmentation()
    out_dir = Path(out_dir)
    start = time.perf_counter()
    generator = torch.Generator().manual_seed(seed)
    train = _world_frames(train_clips, CLASSIFIER_TRAIN_SEED + seed, frames_per_clip, config.size)
    held = _world_frames(held_out_clips, CLASSIFIER_HELD_OUT_SEED + seed, frames_per_clip, config.size)
    x_train = torch.from_numpy(train["frames"]).permute(0, 3, 1, 2).float()     # (N, 3, H, W) 0..255
    y_train = {a: torch.from_numpy(train[a]) for a in ATTRIBUTES}
    with torch.random.fork_rng():                  # seeded initial weights, the global RNG left as it was
        torch.manual_seed(seed)
        net = AttributeClassifier(config)
    optimiser = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=lr, total_steps=steps, pct_start=0.1)
    bar = tqdm(range(steps), desc="classifier", disable=not progress, dynamic_ncols=True)
    for step in bar:
        net.train()
        index = torch.randint(0, len(x_train), (batch,), generator=generator)
        x = x_train[index]
        flip = torch.rand(batch, generator=generator) < 0.5
        x = torch.where(flip[:, None, None, None], x.flip(-1), x)
        logits = net(_to_input(augmentation(x, generator)))
        loss = sum(nn.functional.cross_entropy(logits[a], y_train[a][index]) for a in ATTRIBUTES)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        schedule.step()
        if step % 50 == 0:
            bar.set_postfix(loss=f"{loss.item():.3f}")
    bar.close()
    train_seconds = time.perf_counter() - start

    x_held = torch.from_numpy(held["frames"]).permute(0, 3, 1, 2).float()
    test_gen = torch.Generator().manual_seed(seed + 1)
    strongest = Augmentation(blur_sigma=(1.2, 1.2), noise_std=(12.0, 12.0), clean=0.0)
    held_out = {
        "frames": len(x_held), "clips": held_out_clips, "seed": CLASSIFIER_HELD_OUT_SEED + seed,
        "clean": _accuracies(net, x_held, held),
        "augmented": _accuracies(net, augmentation(x_held, test_gen), held),
        "strongest": _accuracies(net, strongest(x_held, test_gen), held),
        "strongest_augmentation": asdict(strongest),
    }
    record = {
        "format": "motiontransfer-attribute-classifier", "version": 1,
        "architecture": {"size": config.size, "channels": list(config.channels)},
        "classes": {a: list(config.classes[a]) for a in ATTRIBUTES},
        "parameters": sum(p.numel() for p in net.parameters()),
        "training": {"seed": seed, "steps": steps, "batch": batch, "lr": lr, "optimiser": "AdamW, one-cycle",
                     "train_clips": train_clips, "frames_per_clip": frames_per_clip,
                     "data_seed": CLASSIFIER_TRAIN_SEED + seed, "augmentation": asdict(augmentation),
                     "hflip": True, "seconds": round(train_seconds, 1), "torch": torch.__version__,
                     "threads": torch.get_num_threads()},
        "held_out": held_out,
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    state = {k: v.contiguous() for k, v in net.state_dict().items()}
    save_file(state, str(out_dir / "model.safetensors"), metadata={"format": "pt"})
    (out_dir / "config.json").write_text(json.dumps(record, indent=2) + "\n")
    logger.info("classifier trained in %.0f s; held-out clean %s", train_seconds, held_out["clean"])
    return record


def shipped_classifier_path() -> Path:
    return Path(str(resources.files("motiontransfer.shapes"))) / "weights" / "classifier"


def _classifier_record(path: str | Path | None = None) -> dict:
    directory = Path(path) if path is not None else shipped_classifier_path()
    return json.loads((directory / "config.json").read_text())


@lru_cache(maxsize=4)
def load_classifier(path: str | Path | None = None) -> AttributeClassifier:
    """The classifier in `path` (default: the shipped weights), in eval mode on the CPU; cached per path."""
    from safetensors.torch import load_file

    from ..errors import ModelError

    directory = Path(path) if path is not None else shipped_classifier_path()
    try:
        record = json.loads((directory / "config.json").read_text())
        state = load_file(str(directory / "model.safetensors"))
    except (OSError, ValueError) as e:
        raise ModelError(f"cannot load the attribute classifier from {directory} ({type(e).__name__}); "
                         f"train one with `python -m motiontransfer.shapes_eval train-classifier`") from None
    classes = record["classes"]
    if any(tuple(classes[a]) != CLASSES[a] for a in ATTRIBUTES):
        raise ModelError(f"the classifier in {directory} was trained on other classes than motiontransfer.world "
                         f"has now; retrain it with `python -m motiontransfer.shapes_eval train-classifier`")
    arch = record["architecture"]
    net = AttributeClassifier(ClassifierConfig(size=arch["size"], channels=tuple(arch["channels"]),
                                               classes=classes))
    net.load_state_dict(state)
    return net.eval().requires_grad_(False)


# ----------------------------------------------------------------------------------------------- attributes

def _check_frames(frames: np.ndarray) -> np.ndarray:
    if not isinstance(frames, np.ndarray) or frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        desc = f"{frames.dtype} {frames.shape}" if isinstance(frames, np.ndarray) else type(frames).__name__
        raise ValueError(f"frames must be an np.ndarray (F, H, W, 3) uint8 RGB, got {desc}")
    if min(frames.shape[:3]) < 1:
        raise ValueError(f"frames is empty: shape {frames.shape}")
    return frames


def classify_frames(frames: np.ndarray, classifier: AttributeClassifier | None = None,
                    batch: int = 256) -> dict[str, np.ndarray]:
    """Per-frame class probabilities: frames (F, H, W, 3) uint8 -> {attribute: (F, K) float32}.

    Frames that are not the classifier's size are resized to it with cv2.INTER_AREA first.
    """
    frames = _check_frames(frames)
    net = classifier or load_classifier()
    side = net.config.size
    if frames.shape[1:3] != (side, side):
        frames = np.stack([cv2.resize(f, (side, side), interpolation=cv2.INTER_AREA) for f in frames])
    out: dict[str, list[np.ndarray]] = {a: [] for a in ATTRIBUTES}
    with torch.no_grad():
        for i in range(0, len(frames), batch):
            logits = net(_to_input(frames[i:i + batch]))
            for a in ATTRIBUTES:
                out[a].append(torch.softmax(logits[a], dim=1).numpy())
    return {a: np.concatenate(v) for a, v in out.items()}


def classify_video(frames: np.ndarray, classifier: AttributeClassifier | None = None) -> dict:
    """What a video shows: frames (F, H, W, 3) uint8 -> dict.

    {"shape", "colour", "background"}: the class with the highest probability averaged over frames;
    "confidence": {attribute: that mean probability}; "probabilities": {attribute: {class: mean probability}};
    "frames": {attribute: per-frame arg-max class names}; "frame_probabilities": {attribute: (F, K) float32}.
    """
    probs = classify_frames(frames, classifier)
    out: dict = {"confidence": {}, "probabilities": {}, "frames": {}, "frame_probabilities": probs}
    for a in ATTRIBUTES:
        names = CLASSES[a]
        mean = probs[a].mean(axis=0)
        out[a] = names[int(mean.argmax())]
        out["confidence"][a] = float(mean.max())
        out["probabilities"][a] = {n: float(p) for n, p in zip(names, mean)}
        out["frames"][a] = [names[i] for i in probs[a].argmax(axis=1)]
    return out


def attribute_fidelity(frames: np.ndarray, prompt: str, *, attributes: dict | None = None) -> dict:
    """Does the video show what the prompt names? Uses `world.parse_caption(prompt)`.

    Returns {"colour_ok", "shape_ok", "background_ok"}: bool, or None where the prompt does not name the
    attribute; "score": the mean of the named ones (None when the prompt names none); "prompted" and
    "predicted": {attribute: name}. `attributes` may pass a `classify_video` result to skip classifying again.
    """
    asked = world.parse_caption(prompt)
    seen = attributes if attributes is not None else classify_video(frames)
    out: dict = {"prompted": {a: asked[a] for a in ATTRIBUTES}, "predicted": {a: seen[a] for a in ATTRIBUTES}}
    named = []
    for a in ATTRIBUTES:
        ok = None if asked[a] is None else seen[a] == asked[a]
        out[f"{a}_ok"] = ok
        if ok is not None:
            named.append(ok)
    out["score"] = float(np.mean(named)) if named else None
    return out


# ------------------------------------------------------------------------------------- segmentation, tracking

def _scaled_area(pixels_at_32: float, height: int, width: int) -> float:
    return pixels_at_32 * height * width / REFERENCE_AREA


def segment_object(frames: np.ndarray, *, min_area: float | None = None) -> dict:
    """The object in every frame of a plain-background video (method in the module docstring).

    frames (F, H, W, 3) uint8 -> {
        "centres": (F, 2) float64, (x, y) of the largest component, coverage-weighted; NaN where no foreground,
        "areas": (F,) int64, pixels in the largest component (0 where none),
        "components": (F,) int64, components of at least `min_area` px (default MIN_COMPONENT_AREA at 32x32,
            scaled with the frame area),
        "largest_share": (F,) float64, the largest component's share of the foreground pixels (0 where none),
        "masks": (F, H, W) bool, the largest component,
        "background": (3,) float64 RGB, "contrast": float, "threshold": float (RGB distances)}
    """
    frames = _check_frames(frames)
    n, h, w, _ = frames.shape
    min_area = _scaled_area(MIN_COMPONENT_AREA, h, w) if min_area is None else min_area
    rgb = frames.astype(np.float32)
    border = np.concatenate([rgb[:, 0], rgb[:, -1], rgb[:, :, 0], rgb[:, :, -1]], axis=1).reshape(-1, 3)
    background = np.median(border, axis=0)
    distance = np.linalg.norm(rgb - background, axis=-1)                       # (F, H, W)
    strong = distance[distance >= FG_MIN_DISTANCE]
    contrast = float(np.percentile(strong, CONTRAST_PERCENTILE)) if strong.size else float("nan")
    threshold = max(FG_MIN_DISTANCE, FG_FRACTION * contrast) if strong.size else FG_MIN_DISTANCE
    foreground = distance > threshold
    coverage = np.clip(distance / contrast, 0.0, 1.0) if strong.size else np.zeros_like(distance)
    xs, ys = np.arange(w) + 0.5, np.arange(h) + 0.5
    grow = np.ones((3, 3), np.uint8)

    centres = np.full((n, 2), np.nan)
    areas = np.zeros(n, np.int64)
    components = np.zeros(n, np.int64)
    share = np.zeros(n)
    masks = np.zeros((n, h, w), bool)
    for f in range(n):
        count, labels, stats, _ = cv2.connectedComponentsWithStats(foreground[f].astype(np.uint8), connectivity=8)
        sizes = stats[1:, cv2.CC_STAT_AREA]                                    # label 0 is the background
        if not len(sizes):
            continue
        largest = 1 + int(sizes.argmax())
        mask = labels == largest
        masks[f] = mask
        areas[f] = sizes.max()
        components[f] = int((sizes >= min_area).sum())
        share[f] = sizes.max() / sizes.sum()
        weights = coverage[f] * cv2.dilate(mask.astype(np.uint8), grow).astype(bool)
        total = weights.sum()
        centres[f] = (weights.sum(axis=0) @ xs / total, weights.sum(axis=1) @ ys / total)
    return {"centres": centres, "areas": areas, "components": components, "largest_share": share,
            "masks": masks, "background": background.astype(np.float64), "contrast": contrast,
            "threshold": float(threshold)}


def object_track(frames: np.ndarray) -> np.ndarray:
    """The object's centre (x, y) per frame, (F, 2) float64 px; NaN where a frame has no foreground."""
    return segment_object(frames)["centres"]


def _steps(centres: np.ndarray) -> np.ndarray:
    """Frame-to-frame displacement lengths (F-1,) px; NaN where either end is missing."""
    return np.linalg.norm(np.diff(centres, axis=0), axis=1)


def coherence(frames: np.ndarray, *, segmentation: dict | None = None) -> dict:
    """Is the video one persistent, moving object? frames (F, H, W, 3) uint8 -> dict.

    "one_object": in every frame the largest component holds >= ONE_OBJECT_SHARE of the foreground and covers
        at least MIN_OBJECT_AREA px (at 32x32, scaled with frame area), and every frame's object area is within
        a factor AREA_FACTOR of the median area;
    "max_jump": the largest frame-to-frame centre displacement, px (steps with a missing centre are skipped;
        NaN with fewer than two centres);
    "path_length": the summed displacements, px; "moves": path_length > MOVES_MIN_PATH;
    "frames_ok": the share of frames passing the per-frame test; "min_share", "area_range" (min and max area
    over the median) for diagnosis. `segmentation` may pass a `segment_object` result.
    """
    seg = segmentation if segmentation is not None else segment_object(frames)
    h, w = seg["masks"].shape[1:]
    areas, share = seg["areas"].astype(np.float64), seg["largest_share"]
    frame_ok = (share >= ONE_OBJECT_SHARE) & (areas >= _scaled_area(MIN_OBJECT_AREA, h, w))
    median = float(np.median(areas))
    area_ok = median > 0 and bool(np.all((areas >= median / AREA_FACTOR) & (areas <= median * AREA_FACTOR)))
    steps = _steps(seg["centres"])
    finite = steps[np.isfinite(steps)]
    path = float(finite.sum())
    return {"one_object": bool(frame_ok.all() and area_ok),
            "max_jump": float(finite.max()) if finite.size else float("nan"),
            "path_length": path, "moves": path > MOVES_MIN_PATH,
            "frames_ok": float(frame_ok.mean()), "min_share": float(share.min()),
            "area_range": [float(areas.min() / median), float(areas.max() / median)] if median > 0 else [0.0, 0.0]}


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    if len(a) < 2 or a.std() == 0 or b.std() == 0:
        return float("nan")
    return float(np.corrcoef(a, b)[0, 1])


def trajectory_agreement(src_centres: np.ndarray, out_centres: np.ndarray, *, still: float = STILL_STEP) -> dict:
    """How well a track follows another: both (F, 2) px, NaN for missing frames -> dict.

    "velocity_cosine": the mean over frame steps k of cos(v_k, v~_k), v_k = c_(k+1) - c_k. A step where both
        displacements are shorter than `still` px is skipped (both agree nothing moves; their directions are
        noise); a step where exactly one is shorter counts 0 (no agreement in direction); a step with a missing
        centre is skipped. NaN when no step is left (neither track moves).
    "steps": how many steps entered the mean;
    "centre_error": the mean distance between the tracks, px, over frames where both exist;
    "corr_x", "corr_y": Pearson correlation of the x (y) coordinates over those frames (NaN for a constant one).
    """
    a, b = np.asarray(src_centres, np.float64), np.asarray(out_centres, np.float64)
    if a.shape != b.shape or a.ndim != 2 or a.shape[1] != 2:
        raise ValueError(f"tracks must both be (F, 2), got {a.shape} and {b.shape}")
    va, vb = np.diff(a, axis=0), np.diff(b, axis=0)
    na, nb = np.linalg.norm(va, axis=1), np.linalg.norm(vb, axis=1)
    known = np.isfinite(na) & np.isfinite(nb)
    moving_a, moving_b = na >= still, nb >= still
    used = known & (moving_a | moving_b)
    both = used & moving_a & moving_b
    cos = np.zeros(len(va))
    cos[both] = (va[both] * vb[both]).sum(axis=1) / (na[both] * nb[both])
    present = np.isfinite(a).all(axis=1) & np.isfinite(b).all(axis=1)
    error = np.linalg.norm(a[present] - b[present], axis=1)
    return {"velocity_cosine": float(cos[used].mean()) if used.any() else float("nan"),
            "steps": int(used.sum()),
            "centre_error": float(error.mean()) if error.size else float("nan"),
            "corr_x": _pearson(a[present, 0], b[present, 0]), "corr_y": _pearson(a[present, 1], b[present, 1])}


# ------------------------------------------------------------------------------------------------- report

def _nanmean(values) -> float:
    values = np.asarray([np.nan if v is None else v for v in values], np.float64)
    return float(np.nanmean(values)) if np.isfinite(values).any() else float("nan")


def _nanmedian(values) -> float:
    values = np.asarray(values, np.float64)
    return float(np.nanmedian(values)) if np.isfinite(values).any() else float("nan")


def _rate(flags) -> float:
    flags = list(flags)
    return float(np.mean(flags)) if flags else float("nan")


def _prompt(colour: str, shape: str, background: str) -> str:
    return f"a {colour} {shape} on a {background} background"


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
                    "prompt": _prompt(colour, shape, background)})
    return out


def transfer_pairs(pairs: int, seed: int, size: int, frames: int) -> list[tuple[world.Clip, dict]]:
    """Source clips and target prompts from `default_rng(seed + PAIR_SEED)`: each target has another shape and
    another colour than its source, on the source's background (a colour allowed there), uniformly drawn."""
    rng = np.random.default_rng(seed + PAIR_SEED)
    out = []
    for _ in range(pairs):
        clip = world.sample_clip(rng, size, frames, motion_phrase_prob=0.0)
        p = clip.params
        shapes = [s for s in world.SHAPES if s != p.shape]
        colours = [c for c in world.allowed_colours(p.background) if c != p.colour]
        target = {"shape": shapes[int(rng.integers(len(shapes)))], "colour": colours[int(rng.integers(len(colours)))],
                  "background": p.background}
        target["prompt"] = _prompt(target["colour"], target["shape"], target["background"])
        out.append((clip, target))
    return out


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * math.log10(255.0 ** 2 / mse)


def _judge(frames: np.ndarray, target: dict, source_centres: np.ndarray | None = None) -> dict:
    """Attributes, coherence and (given the source's true centres) trajectory agreement of one video."""
    seg = segment_object(frames)
    seen = classify_video(frames)
    out = {a: seen[a] for a in ATTRIBUTES}
    out.update({f"{a}_ok": seen[a] == target[a] for a in ATTRIBUTES})
    out.update(coherence(frames, segmentation=seg))
    if source_centres is not None:
        out.update(trajectory_agreement(source_centres, seg["centres"]))
    return out


def _summary(items: list[dict]) -> dict:
    return {"n": len(items),
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
        one object, seconds per video. "source" scores the tracker on the source clips themselves.

    Shares are fractions in [0, 1]. Writes the report as JSON to `out` when given.
    """
    from ..config import TransferConfig
    from ..pipeline import get_model, text_to_video, transfer, versions

    if n_prompts < 1 or pairs < 0 or real_clips < 1 or vae_clips < 0 or steps < 1:
        raise ValueError("need n_prompts >= 1, pairs >= 0, real_clips >= 1, vae_clips >= 0 and steps >= 1")
    start = time.perf_counter()
    generator = get_model(TransferConfig(model=model))
    size, frames = generator.defaults.width, generator.defaults.frames
    if generator.defaults.height != size:
        raise ValueError(f"the shapes evaluation needs square frames, the model makes "
                         f"{size}x{generator.defaults.height}")
    classifier = load_classifier()
    common = {"model": model, "steps": steps, "quiet": True}
    # transfer and its baseline: the method's defaults (50 steps) unless transfer_steps says otherwise
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
    real = world.make_dataset(real_clips, seed=seed + REAL_SEED, size=size, frames=frames)
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
        data = world.make_dataset(vae_clips, seed=seed + VAE_SEED, size=size, frames=frames)
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
    for i, (clip, target) in enumerate(tqdm(transfer_pairs(pairs, seed, size, frames), desc="transfer",
                                            disable=not progress, dynamic_ncols=True)):
        truth = clip.centres.astype(np.float64)
        p = clip.params
        src_target = {"shape": p.shape, "colour": p.colour, "background": p.background}
        s = _judge(clip.frames, src_target, truth) | {"seconds": float("nan")}
        tic = time.perf_counter()
        result = transfer(clip.frames, target["prompt"], output_dir=False, seed=i, use_cache=False,
                          **pair_options)
        m = _judge(result.frames, target, truth) | {"seconds": time.perf_counter() - tic}
        tic = time.perf_counter()
        result = text_to_video(target["prompt"], seed=i, **pair_options)
        b = _judge(result.frames, target, truth) | {"seconds": time.perf_counter() - tic}
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
                     "classifier_held_out_clean": _classifier_record()["held_out"]["clean"],
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
        rows = [("velocity cosine", "velocity_cosine", num), ("centre error px", "centre_error", num),
                ("x correlation", "corr_x", num), ("y correlation", "corr_y", num),
                ("target colour", "target_colour", pct), ("target shape", "target_shape", pct),
                ("one object", "one_object", pct), ("seconds a video", "seconds_per_video", num)]
        lines += ["", f"motion transfer ({tr['pairs']} held-out pairs: another shape and colour on "
                      f"{tr['target_background']} background)",
                  f"  {'':<22} {'transfer':>10} {'text-to-video':>14} {'source (check)':>15}"]
        for label, key, fmt in rows:
            source_value = "" if key.startswith("target") or key == "seconds_per_video" else fmt(src[key])
            lines.append(f"  {label:<22} {fmt(m[key]):>10} {fmt(b[key]):>14} {source_value:>15}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------- CLI

def main(argv: list[str] | None = None) -> int:
    from ..errors import MotionTransferError

    parser = argparse.ArgumentParser(prog="python -m motiontransfer.shapes_eval",
                                     description="Evaluation of the shapes text-to-video model.")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--quiet", action="store_true", help="no progress bars or logs")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("train-classifier", parents=[common], help="train the attribute classifier on world frames")
    p.add_argument("--out", type=Path, default=shipped_classifier_path(), help="folder (the shipped weights)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=2500)
    p = sub.add_parser("report", parents=[common], help="measure the model's quality bar: a table, and JSON")
    p.add_argument("--model", default=None, help="model folder (default: the shipped shapes model)")
    p.add_argument("--n", type=int, default=60, help="text-to-video prompts (60)")
    p.add_argument("--pairs", type=int, default=20, help="motion transfer pairs (20)")
    p.add_argument("--steps", type=int, default=25, help="sampling steps of the text-to-video part (25)")
    p.add_argument("--transfer-steps", type=int, default=None,
                   help="sampling steps of the transfer part and its baseline (default: the method's, 50)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--real-clips", type=int, default=200, help="world clips for the real max-jump statistic")
    p.add_argument("--vae-clips", type=int, default=20, help="world clips for the VAE round trip")
    p.add_argument("--json", type=Path, default=None, help="write the report here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="%(message)s")
    for noisy in ("diffusers", "transformers", "huggingface_hub"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    if args.quiet:
        from ..cli import _quiet_libraries

        _quiet_libraries()
    try:
        if args.command == "train-classifier":
            record = train_classifier(args.out, seed=args.seed, steps=args.steps, progress=not args.quiet)
            print(json.dumps({"out": str(args.out), "parameters": record["parameters"],
                              "seconds": record["training"]["seconds"], "held_out": record["held_out"]}, indent=2))
        else:
            report = evaluate_model(args.model, n_prompts=args.n, seed=args.seed, steps=args.steps, out=args.json,
                                    transfer_steps=args.transfer_steps,
                                    pairs=args.pairs, real_clips=args.real_clips, vae_clips=args.vae_clips,
                                    progress=not args.quiet)
            print(format_report(report))
            if args.json:
                print(f"\nwrote {args.json}")
    except MotionTransferError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
