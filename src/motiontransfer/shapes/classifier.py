"""The attribute classifier of the shapes world: what a video shows (shape, colour, background).

A small CNN (`AttributeClassifier`) reads single 32x32 RGB frames and predicts the object's shape, its colour and
the background, with one head per attribute over `world.SHAPES`, `world.COLOURS` and `world.BACKGROUNDS`. It is
trained on world frames only (never on model output), with augmentations standing in for a small diffusion
model's artefacts: Gaussian blur, Gaussian noise, a per-channel colour shift and a contrast change
(`Augmentation`). A video's attribute is the arg-max of the per-frame probabilities averaged over its frames
(`classify_video`); `attribute_fidelity` compares it with what a prompt names. Shipped weights:
`weights/classifier/` (`motiontransfer train-classifier` writes them).

Frames are np.ndarray (F, H, W, 3) uint8 RGB throughout.
"""

from __future__ import annotations

import json
import logging
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

from ..video import atomic_path, atomic_write_text, check_frames
from . import world

logger = logging.getLogger(__name__)

ATTRIBUTES = ("shape", "colour", "background")
CLASSES: dict[str, tuple[str, ...]] = {"shape": tuple(world.SHAPES), "colour": tuple(world.COLOURS),
                                       "background": tuple(world.BACKGROUNDS)}
INPUT_SIZE = 32                     # px, the classifier's frame side; other sizes are resized (INTER_AREA)

# Seed offsets. The generator trains on world.make_dataset(..., seed=0) and the report draws from seed + 1000 ..
# + 4000; the classifier's data lives far from both.
CLASSIFIER_TRAIN_SEED = 1_000_000   # + seed: the classifier's training clips
CLASSIFIER_HELD_OUT_SEED = 2_000_000  # + seed: its held-out clips (accuracies in config.json)
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


def train_classifier(out_dir: str | Path | None = None, seed: int = 0, steps: int = 2500, progress: bool = True, *,
                     batch: int = 128, lr: float = 3e-3, train_clips: int = 6000, frames_per_clip: int = 4,
                     held_out_clips: int = 500, config: ClassifierConfig | None = None,
                     augmentation: Augmentation | None = None) -> dict:
    """Trains the attribute classifier on world frames and writes `model.safetensors` + `config.json` to `out_dir`
    (default: the shipped weights, `weights/classifier/`).

    Data: `frames_per_clip` random frames of each of `train_clips` clips from
    `world.make_dataset(seed=CLASSIFIER_TRAIN_SEED + seed)`, horizontally flipped at random (every world shape
    is mirror-symmetric up to rotation) and degraded by `augmentation`. AdamW, cosine learning rate, the sum
    of the three cross-entropies. Held-out accuracies (clean, randomly augmented, and at the strongest blur and
    noise) on clips from `CLASSIFIER_HELD_OUT_SEED + seed` go into config.json. Returns the config written.
    """
    from safetensors.torch import save_file

    config = config or ClassifierConfig()
    augmentation = augmentation or Augmentation()
    out_dir = Path(out_dir) if out_dir is not None else shipped_classifier_path()
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
    with atomic_path(out_dir / "model.safetensors") as tmp:
        save_file(state, str(tmp), metadata={"format": "pt"})
    atomic_write_text(out_dir / "config.json", json.dumps(record, indent=2) + "\n")
    logger.info("classifier trained in %.0f s; held-out clean %s", train_seconds, held_out["clean"])
    return record


def shipped_classifier_path() -> Path:
    return Path(str(resources.files("motiontransfer.shapes"))) / "weights" / "classifier"


def classifier_record(path: str | Path | None = None) -> dict:
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
                         f"train one with `motiontransfer train-classifier`") from None
    classes = record["classes"]
    if any(tuple(classes[a]) != CLASSES[a] for a in ATTRIBUTES):
        raise ModelError(f"the classifier in {directory} was trained on other classes than motiontransfer.world "
                         f"has now; retrain it with `motiontransfer train-classifier`")
    arch = record["architecture"]
    net = AttributeClassifier(ClassifierConfig(size=arch["size"], channels=tuple(arch["channels"]),
                                               classes=classes))
    net.load_state_dict(state)
    return net.eval().requires_grad_(False)


# ----------------------------------------------------------------------------------------------- attributes

def classify_frames(frames: np.ndarray, classifier: AttributeClassifier | None = None,
                    batch: int = 256) -> dict[str, np.ndarray]:
    """Per-frame class probabilities: frames (F, H, W, 3) uint8 -> {attribute: (F, K) float32}.

    Frames that are not the classifier's size are resized to it with cv2.INTER_AREA first.
    """
    frames = check_frames(frames)
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


__all__ = ["ATTRIBUTES", "CLASSES", "AttributeClassifier", "Augmentation", "ClassifierConfig", "attribute_fidelity",
           "classify_frames", "classify_video", "load_classifier", "shipped_classifier_path", "train_classifier"]
