"""Video input and output: reading clips, resizing them, writing results atomically.

One layout at this boundary: frames are `np.ndarray` of shape (F, H, W, 3), dtype uint8, RGB.

Inputs (`read_video`):
    .mp4 .mov .avi .webm .mkv   decoded with PyAV; decoding stops as soon as the requested frames are in
    .gif                        decoded with Pillow; palette and transparency composited on black
    a folder of images          .png .jpg .jpeg .bmp .webp, in natural order ("frame2" before "frame10")

Outputs (`write_video`, `write_frames`, `atomic_write_bytes`, `atomic_write_text`) are written under a temporary
name in the target's own folder and moved into place with `os.replace` (`atomic_path`, which the rest of the
package uses for its caches, checkpoints and plots too), so a reader never sees half a file and a failed write
leaves nothing behind.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import math
import os
import re
import secrets
import shlex
import shutil
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Callable, Iterator

import av
import cv2
import numpy as np
from PIL import Image, ImageOps

from .config import RESIZE_POLICIES, InputLimits
from .errors import OutputError, VideoError

logger = logging.getLogger(__name__)

VIDEO_SUFFIXES = (".mp4", ".mov", ".avi", ".webm", ".mkv")
GIF_SUFFIX = ".gif"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
WRITE_SUFFIXES = (".mp4", ".gif")

FOLDER_FPS = 8.0        # frames per second of an image folder, which carries no timing of its own
GIF_FPS = 10.0          # a gif frame of 0-10 ms is shown for 100 ms by browsers; we read it the same way
MP4_CRF = 12            # x264 constant rate factor, near lossless: a smooth 64x48 clip round-trips at ~38 dB PSNR


@dataclass
class Video:
    frames: np.ndarray      # (F, H, W, 3) uint8 RGB
    fps: float              # frames per second of `frames`: the source rate divided by the stride
    source: str             # the path it was read from
    fit: str = ""           # how it was cropped and resized to the model's frame, in words ("" if untouched)
    size: tuple[int, int] | None = None     # (width, height) of the source's frames when `frames` were fitted


# --------------------------------------------------------------------------------------------------- reading

def read_video(path: str | os.PathLike, *, frames: int | None = None, stride: int = 1, start: int = 0,
               limits: InputLimits | None = None, allow_fewer: bool = False,
               fit: Callable[[np.ndarray], np.ndarray] | None = None) -> Video:
    """Read frames `start, start + stride, ...` of a video file, gif or image folder; `frames` of them, or all.

    Only the frames up to the last one taken are decoded. `limits` (default `InputLimits()`) are checked from the
    file's size and header before any frame is decoded, and again as frames come. With `allow_fewer`, a source
    with fewer than `frames` selectable frames gives what it has instead of an error. `fit`, when given, is applied
    to each frame as it is decoded (the crop and resize to a model's size), so that only one frame of the source's
    size is held at a time; `Video.size` keeps the source's (width, height).
    The returned fps is the source's rate divided by `stride` (an image folder counts as `FOLDER_FPS`).
    Raises `VideoError` when the path is missing, unsupported, undecodable, over a limit or holds too few frames.
    """
    if frames is not None and frames < 1:
        raise VideoError(f"The number of frames must be at least 1, not {frames}.")
    if stride < 1:
        raise VideoError(f"The stride must be at least 1, not {stride}.")
    if start < 0:
        raise VideoError(f"The start frame must be 0 or more, not {start}.")
    limits = limits or InputLimits()
    path = Path(path)
    if not path.exists():
        raise VideoError(f"{path} does not exist; check the path.")
    if path.is_dir():
        reader = _read_folder
    elif path.suffix.lower() in VIDEO_SUFFIXES:
        reader = _read_container
    elif path.suffix.lower() == GIF_SUFFIX:
        reader = _read_gif
    else:
        raise VideoError(unsupported_type(path))
    if frames is not None:
        _limit(path, "frames", frames, limits.max_frames, "--max-frames")
    request = _Request(path, frames, stride, start, limits, allow_fewer, fit)
    with warnings.catch_warnings():         # the limits above replace Pillow's decompression-bomb warning
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        selected, source_fps = reader(request)
    logger.debug("read %d frames of %s (start %d, stride %d)", len(selected), path, start, stride)
    size = (request.first_shape[1], request.first_shape[0]) if fit is not None else None
    return Video(frames=np.stack(selected), fps=source_fps / stride, source=str(path), size=size)


def unsupported_type(path: Path) -> str | None:
    """The error message for an input path `read_video` cannot read by its type; None when it can (or when it
    does not exist yet). Checked before a model loads."""
    if not path.exists() or path.is_dir() or path.suffix.lower() in VIDEO_SUFFIXES + (GIF_SUFFIX,):
        return None
    supported = ", ".join(VIDEO_SUFFIXES + (GIF_SUFFIX,))
    return (f"{path} has an unsupported type {_clip(path.suffix, 20) or '(no extension)'!r}; "
            f"pass a {supported} file or a folder of images.")


def check_input(path: str | os.PathLike) -> None:
    """The cheap checks of an input, before any library or model loads (a second, not ten): it exists, has a
    readable type, and its header opens: a container with a video stream, a GIF, or a folder with images.
    Raises the VideoError `read_video` would."""
    path = Path(path)
    if not path.exists():
        raise VideoError(f"{path} does not exist; check the path.")
    unsupported = unsupported_type(path)
    if unsupported:
        raise VideoError(unsupported)
    if path.is_dir():
        if not any(p.suffix.lower() in IMAGE_SUFFIXES for p in path.iterdir()):
            raise VideoError(f"{path} holds no images; put numbered {', '.join(IMAGE_SUFFIXES)} frames in it.")
        return
    try:
        if path.suffix.lower() == GIF_SUFFIX:
            with Image.open(path):
                pass
            return
        with av.open(str(path), metadata_errors="replace") as container:
            if not container.streams.video:
                raise VideoError(f"{path} holds no video stream (audio only, or not a video); pass a video file.")
    except VideoError:
        raise
    except Exception as error:              # whatever the container or image library says of a broken header
        raise _undecodable(path, error) from None


def _clip(text: str, limit: int = 80) -> str:
    """`text` cut to `limit` characters for an error message (inputs can be arbitrarily long)."""
    return text if len(text) <= limit else text[:limit] + f"... ({len(text)} characters)"


@dataclass
class _Request:
    path: Path
    frames: int | None
    stride: int
    start: int
    limits: InputLimits
    allow_fewer: bool
    fit: Callable[[np.ndarray], np.ndarray] | None = None
    first_shape: tuple | None = None                 # of the first raw frame taken
    noted: list = field(default_factory=list)        # frames of another size were seen (said once)

    def take(self, selected: list, index: int, frame: np.ndarray, resize_others: bool = False) -> None:
        """Adds a decoded frame (H, W, 3) uint8 to `selected`, fitted by `fit` at once (so only one raw frame is
        held at a time). A frame of another size than the first is an error, or with `resize_others` (an image
        folder) resized to the first's size, said once."""
        if self.first_shape is None:
            self.first_shape = frame.shape
        elif frame.shape != self.first_shape:
            if not resize_others:
                raise VideoError(f"{self.path.name}: frame {index} is {frame.shape[1]}x{frame.shape[0]} but the "
                                 f"first frame is {self.first_shape[1]}x{self.first_shape[0]}; bring all frames "
                                 f"to one size.")
            if not self.noted:
                self.noted.append(index)
                logger.warning("%s: frame %d is %dx%d but the first frame is %dx%d; frames of other sizes are "
                               "resized to the first's", self.path.name, index, frame.shape[1], frame.shape[0],
                               self.first_shape[1], self.first_shape[0])
            frame = cv2.resize(frame, (self.first_shape[1], self.first_shape[0]), interpolation=cv2.INTER_AREA)
        selected.append(frame if self.fit is None else self.fit(frame))

    def count(self, available: int) -> int:
        """How many frames will be taken from `available` source frames."""
        return len(range(self.start, available, self.stride)[:self.frames])

    def check_file_size(self, size: int) -> None:
        _limit(self.path, "size in MB", size / 1e6, self.limits.max_file_mb, "--max-file-mb")

    def check_frame(self, width: int, height: int, count: int) -> None:
        """Before decoding: one frame of width x height, `count` of them to be read."""
        _limit(self.path, "frames to read", count, self.limits.max_frames, "--max-frames")
        _limit(self.path, f"pixels per frame ({width}x{height})", width * height, self.limits.max_frame_pixels,
               "--max-frame-pixels")
        _limit(self.path, f"pixels in all ({count} frames of {width}x{height})", count * width * height,
               self.limits.max_total_pixels, "--max-total-pixels")


def _limit(path: Path, what: str, value: float, limit: float, flag: str) -> None:
    if value > limit:
        shown = (lambda v: f"{v:,}" if isinstance(v, int) else f"{v:.6g}")
        raise VideoError(f"{_clip(path.name)}: {what} is {shown(value)}, over the limit of {shown(limit)}; "
                         f"pass {flag} {math.ceil(value)} "
                         f"or more to read it anyway, or cut the input down (--frames, --stride, --region).")


def _needed(frames: int | None, stride: int, start: int) -> int | None:
    """How many source frames must exist to take `frames` frames; None when all are wanted."""
    return None if frames is None else start + stride * (frames - 1) + 1


def _check_count(request: _Request, available: int) -> None:
    """Raise the too-few-frames error when `available` source frames cannot give what was asked."""
    path, frames, stride, start = request.path, request.frames, request.stride, request.start
    selectable = len(range(start, available, stride))
    if selectable == 0:
        raise VideoError(f"{path.name} has {available} frames; start {start} is past its end. "
                         f"Pass --start {max(available - 1, 0)} or lower.")
    needed = _needed(frames, stride, start)
    if needed is not None and available < needed and not request.allow_fewer:
        fix = f"Pass --frames {selectable} or fewer, or a lower --stride." if selectable >= MIN_FRAMES else \
            f"A transfer needs at least {MIN_FRAMES} frames: pass a lower --start or --stride, or a longer clip."
        raise VideoError(f"{path.name} has {available} frames; {needed} are needed (start {start}, stride {stride}). "
                         f"{fix}")


MIN_FRAMES = 2               # what a transfer takes at least (config.validate: --frames)


def _undecodable(path: Path, error: Exception) -> VideoError:
    return VideoError(f"{path} could not be decoded ({_clip(str(error), 200)}); check that it plays, or re-encode it "
                      f"with `ffmpeg -i {shlex.quote(str(path))} -c:v libx264 -pix_fmt yuv420p fixed.mp4`.")


def _read_container(request: _Request) -> tuple[list[np.ndarray], float]:
    path, frames, stride, start = request.path, request.frames, request.stride, request.start
    request.check_file_size(path.stat().st_size)
    needed = _needed(frames, stride, start)
    selected: list[np.ndarray] = []
    count = 0
    try:
        with av.open(str(path), metadata_errors="replace") as container:     # a Latin-1 title is no error
            if not container.streams.video:
                raise VideoError(f"{path} holds no video stream (audio only, or not a video); pass a video file.")
            stream = container.streams.video[0]
            rate = stream.average_rate or stream.guessed_rate
            if stream.codec_context is None:
                raise VideoError(f"{path}'s video stream has no decoder (a damaged header?); re-encode it with "
                                 f"ffmpeg.")
            width, height = stream.codec_context.width, stream.codec_context.height
            declared = request.count(stream.frames) if stream.frames else (frames or 1)
            request.check_frame(width, height, declared)
            for frame in container.decode(stream):
                if count >= start and (count - start) % stride == 0:
                    request.check_frame(frame.width, frame.height, len(selected) + 1)
                    request.take(selected, count, frame.to_ndarray(format="rgb24"))
                count += 1
                if needed is not None and count >= needed:
                    break
    except (av.FFmpegError, OSError, EOFError, UnicodeDecodeError) as error:
        raise _undecodable(path, error) from error
    if count == 0:
        raise VideoError(f"{path} has a video stream but no frame could be decoded; check that it plays, "
                         f"or re-encode it with ffmpeg.")
    _check_count(request, count)
    if rate:
        fps = float(rate)
    else:
        fps = FOLDER_FPS
        logger.warning("%s does not state its frame rate; assuming %.1f fps", path, fps)
    return selected, fps


def _read_gif(request: _Request) -> tuple[list[np.ndarray], float]:
    path, frames, stride, start = request.path, request.frames, request.stride, request.start
    request.check_file_size(path.stat().st_size)
    try:
        with Image.open(path) as image:     # reads the header only: the canvas size, not the frames
            request.check_frame(*image.size, 1)
            count = getattr(image, "n_frames", 1)
            _check_count(request, count)
            indices = range(start, count, stride)[:frames]
            request.check_frame(*image.size, len(indices))
            selected = []
            durations = []      # ms, of the frames up to the last one taken: they set the rate
            for index in range(indices[-1] + 1):
                image.seek(index)
                duration = image.info.get("duration", 0)
                durations.append(duration if duration > 10 else 1000.0 / GIF_FPS)
                if index in indices:
                    request.take(selected, index, _pil_to_rgb(image))
    except Image.DecompressionBombError as error:
        raise _bomb(path, error) from None
    except (OSError, SyntaxError, ValueError, EOFError, IndexError) as error:  # Pillow's decoding errors; a
        raise _undecodable(path, error) from error                        # truncated GIF fails to count frames
    return selected, 1000.0 / float(np.mean(durations))


def _bomb(path: Path, error: Exception) -> VideoError:
    return VideoError(f"{path.name} declares an image too large to decode safely ({_clip(str(error), 120)}); "
                      f"check the file, or resize it first.")


def _natural_key(name: str) -> tuple:
    """'frame10.png' -> ('frame', 10, '.png'): digit runs compare as numbers, whatever their zero padding."""
    parts = re.split(r"(\d+)", name.lower())
    return tuple(int(part) if i % 2 else part for i, part in enumerate(parts)), name


def _read_folder(request: _Request) -> tuple[list[np.ndarray], float]:
    path, frames, stride, start = request.path, request.frames, request.stride, request.start
    files = sorted((p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES),
                   key=lambda p: _natural_key(p.name))
    if not files:
        raise VideoError(f"{path} holds no images; put numbered {', '.join(IMAGE_SUFFIXES)} frames in it.")
    _check_count(request, len(files))
    indices = range(start, len(files), stride)[:frames]
    request.check_file_size(sum(files[i].stat().st_size for i in indices))
    selected = []
    for index in indices:
        try:
            with Image.open(files[index]) as image:     # the header only, until the pixels are asked for
                request.check_frame(*image.size, len(indices))
                frame = _pil_to_rgb(ImageOps.exif_transpose(image))
        except Image.DecompressionBombError as error:
            raise _bomb(files[index], error) from None
        except (OSError, SyntaxError, ValueError) as error:
            raise VideoError(f"{files[index]} could not be decoded ({error}); check that it opens in an image "
                             f"viewer, or export it again.") from error
        request.take(selected, index, frame, resize_others=True)
    return selected, FOLDER_FPS


def _pil_to_rgb(image: Image.Image) -> np.ndarray:
    """A Pillow image in any mode as (H, W, 3) uint8 RGB; transparent pixels are composited on black."""
    if image.mode.startswith("I"):     # 16- or 32-bit greyscale (16-bit PNG): scale 0..65535 to 0..255
        grey = (np.asarray(image).astype(np.uint32) + 128) // 257
        return np.repeat(np.clip(grey, 0, 255).astype(np.uint8)[..., None], 3, axis=-1)
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info:
        rgba = np.asarray(image.convert("RGBA")).astype(np.uint16)
        rgb = (rgba[..., :3] * rgba[..., 3:] + 127) // 255
        return rgb.astype(np.uint8)
    return np.array(image.convert("RGB"), dtype=np.uint8)


# -------------------------------------------------------------------------------------------------- resizing

def check_frames(frames: np.ndarray, name: str = "frames") -> np.ndarray:
    """The one check of the frame layout at the package's boundaries: (F, H, W, 3) uint8 RGB, none of them
    empty. Returns `frames`; raises ValueError naming `name` otherwise."""
    if not isinstance(frames, np.ndarray) or frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        described = (f"{frames.dtype} array of shape {frames.shape}" if isinstance(frames, np.ndarray)
                     else type(frames).__name__)
        raise ValueError(f"{name} must be a uint8 array of shape (F, H, W, 3) RGB, got a {described}")
    if min(frames.shape[:3]) < 1:
        raise ValueError(f"{name} must not be empty, got shape {frames.shape}")
    return frames


def _resize(frames: np.ndarray, width: int, height: int) -> np.ndarray:
    """Resize every frame to (height, width): area averaging when shrinking, bicubic when enlarging."""
    _, h, w, _ = frames.shape
    if (w, h) == (width, height):
        return frames.copy()
    interpolation = cv2.INTER_AREA if width * height < w * h else cv2.INTER_CUBIC
    # cv2 saturates uint8 results, so bicubic overshoot is clipped to 0..255.
    return np.stack([cv2.resize(frame, (width, height), interpolation=interpolation) for frame in frames])


def crop_region(frames: np.ndarray, region: tuple[int, int, int, int]) -> np.ndarray:
    """The box (x, y, width, height) of (F, H, W, 3) frames, in source pixels; it must lie inside the frame."""
    check_frames(frames)
    x, y, w, h = region
    height, width = frames.shape[1:3]
    if w < 1 or h < 1 or x < 0 or y < 0 or x + w > width or y + h > height:
        raise VideoError(f"--region {x},{y},{w},{h} does not lie inside the {width}x{height} frame")
    return frames[:, y:y + h, x:x + w]


def describe_fit(width_in: int, height_in: int, width: int, height: int, policy: str,
                 region: tuple[int, int, int, int] | None = None) -> str:
    """One line saying what `crop_region` and `resize_frames` keep of a width_in x height_in source."""
    words = []
    if region is not None:
        x, y, w, h = region
        words.append(f"region {w}x{h} at ({x}, {y}) of {width_in}x{height_in}")
        width_in, height_in = w, h
    else:
        words.append(f"source {width_in}x{height_in}")
    if policy == "crop" and width_in * height != width * height_in:
        if width_in * height > width * height_in:
            kept = max(1, round(height_in * width / height))
            x0 = (width_in - kept) // 2
            words.append(f"centre crop keeps columns {x0}-{x0 + kept - 1} ({kept / width_in:.0%} of the width)")
            scale = width / kept
        else:
            kept = max(1, round(width_in * height / width))
            y0 = (height_in - kept) // 2
            words.append(f"centre crop keeps rows {y0}-{y0 + kept - 1} ({kept / height_in:.0%} of the height)")
            scale = height / kept
    elif policy == "pad":
        scale = min(width / width_in, height / height_in)
        words.append("padded with black to the model's aspect")
    elif policy == "stretch":
        scale = min(width / width_in, height / height_in)
        if width_in * height != width * height_in:
            words.append("stretched to the model's aspect")
    else:
        scale = width / width_in
    words.append(f"resized to {width}x{height} ({scale:.2g}x)")
    if scale < 0.25:
        words.append("objects smaller than about 1/8 of the frame will be a few pixels across: "
                     "--region selects a part of the frame")
    return "; ".join(words)


def resize_frames(frames: np.ndarray, width: int, height: int, policy: str = "crop") -> np.ndarray:
    """Bring (F, H, W, 3) frames to (F, height, width, 3).

    crop     centre-crop to the target aspect ratio, then resize
    stretch  resize, ignoring the aspect ratio
    pad      resize to fit inside the target, then pad with black, centred (letterbox)
    """
    if policy not in RESIZE_POLICIES:
        raise ValueError(f"unknown resize policy {policy!r}; valid policies are {', '.join(RESIZE_POLICIES)}")
    if width < 1 or height < 1:
        raise ValueError(f"target size must be positive, got {width}x{height}")
    check_frames(frames)
    _, h, w, _ = frames.shape
    if policy == "stretch":
        return _resize(frames, width, height)
    if policy == "crop":
        if w * height > width * h:      # source is wider than the target: crop columns
            crop_w = max(1, round(h * width / height))
            x0 = (w - crop_w) // 2
            frames = frames[:, :, x0:x0 + crop_w]
        else:                           # source is taller (or equal): crop rows
            crop_h = max(1, round(w * height / width))
            y0 = (h - crop_h) // 2
            frames = frames[:, y0:y0 + crop_h]
        return _resize(frames, width, height)
    scale = min(width / w, height / h)
    fit_w, fit_h = min(width, max(1, round(w * scale))), min(height, max(1, round(h * scale)))
    canvas = np.zeros((frames.shape[0], height, width, 3), np.uint8)
    x0, y0 = (width - fit_w) // 2, (height - fit_h) // 2
    canvas[:, y0:y0 + fit_h, x0:x0 + fit_w] = _resize(frames, fit_w, fit_h)
    return canvas


def side_by_side(a: np.ndarray, b: np.ndarray, *, gap: int = 4) -> np.ndarray:
    """Two videos next to each other, (F, H_a, W_a + gap + W_b', 3), with a white gap.

    `b` is resized to `a`'s height keeping its aspect ratio; the result has the shorter of the two frame counts.
    """
    if gap < 0:
        raise ValueError(f"gap must be 0 or more, got {gap}")
    check_frames(a)
    check_frames(b)
    count, height = min(len(a), len(b)), a.shape[1]
    a, b = a[:count], b[:count]
    if b.shape[1] != height:
        b = _resize(b, max(1, round(b.shape[2] * height / b.shape[1])), height)
    white = np.full((count, height, gap, 3), 255, np.uint8)
    return np.concatenate([a, white, b], axis=2)


# --------------------------------------------------------------------------------------------------- writing

def _temporary_sibling(path: Path, keep_suffix: bool = True) -> Path:
    """A fresh hidden name next to `path`: `.result.mp4.tmp-<pid>-<token>.mp4` (the suffix kept for encoders)."""
    token = f"tmp-{os.getpid()}-{secrets.token_hex(4)}"
    return path.with_name(f".{path.name}.{token}{path.suffix if keep_suffix else ''}")


def _remove(path: Path) -> None:
    """Remove a file or folder left by a failed write; never raises."""
    try:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)
    except OSError as error:
        logger.warning("could not remove temporary %s: %s", path, error)


def _cannot_write(path: Path, error: BaseException) -> OutputError:
    reason = getattr(error, "strerror", None) or str(error)
    return OutputError(f"Cannot write {path}: {reason}. Choose another --output-dir.")


@contextmanager
def atomic_path(path: str | os.PathLike, *, keep_suffix: bool = True) -> Iterator[Path]:
    """The package's one way to write a file or a folder atomically.

    Yields a fresh hidden name beside `path` (with `path`'s suffix when `keep_suffix`, for writers that go by
    it); write the file or the folder there. When the block ends normally it takes `path`'s place (a folder
    already there is swapped out, then removed), so a reader sees the old content or the new, never a part; when
    the block raises, whatever was written is removed and `path` is left as it was.
    """
    path = Path(path)
    temporary = _temporary_sibling(path, keep_suffix)
    try:
        yield temporary
        if temporary.is_dir() and path.is_dir():
            old = _temporary_sibling(path, keep_suffix=False)
            os.replace(path, old)
            try:
                os.replace(temporary, path)
            except BaseException:
                os.replace(old, path)
                raise
            _remove(old)
        else:
            os.replace(temporary, path)
    except BaseException:
        _remove(temporary)
        raise


def is_temporary(path: Path, of: Path | None = None) -> bool:
    """Whether `path` is a temporary `atomic_path` made (of `of`, when given): `.<name>.tmp-<pid>-<token>...`."""
    name = path.name
    prefix = f".{of.name}.tmp-" if of is not None else "."
    return name.startswith(prefix) and ".tmp-" in name


def remove_stale_temporaries(path: str | os.PathLike) -> list[Path]:
    """Remove what interrupted writes of `path` left beside it, and, when `path` is a folder, inside it
    (temporaries of `atomic_path`); returns them. Call it only while no other process writes `path` (under
    `folder_lock`).
    """
    path = Path(path)
    if not path.parent.is_dir():
        return []
    stale = [p for p in path.parent.iterdir() if is_temporary(p, of=path)]
    if path.is_dir() and not path.is_symlink():
        stale += [p for p in path.iterdir() if is_temporary(p)]
    for p in stale:
        logger.info("removing %s, left by an interrupted run", p)
        _remove(p)
    return stale


@contextmanager
def folder_lock(path: str | os.PathLike) -> Iterator[Path]:
    """Hold an exclusive lock on the result folder `path` (which need not exist) for the block.

    The lock is an `flock` on `<parent>/.<name>.lock`: the system drops it when the holder exits, however it
    exits, so a killed run never blocks the next. A second process asking for it gets `OutputError` at once.
    The parent folder is created if needed. Yields `path`.
    """
    path = Path(path)
    try:
        parent = check_writable_dir(path.parent)
    except OutputError as error:
        cause = error.__cause__
        reason = "it is a file" if path.parent.is_file() else getattr(cause, "strerror", None) or str(cause)
        raise OutputError(f"Cannot write {path}: {path.parent} is not a writable folder ({reason}). "
                          f"Choose another --output-dir.") from cause
    lock = parent / f".{path.name}.lock"
    while True:
        try:
            fd = os.open(lock, os.O_CREAT | os.O_RDWR, 0o644)
        except OSError as error:
            raise _cannot_write(path, error) from error
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip()
            os.close(fd)
            raise OutputError(f"{path} is being written by another run{f' (pid {holder})' if holder.isdigit() else ''}"
                              f"; wait for it to finish or choose another --output-dir.") from None
        try:                            # the last holder may have removed the file between our open and flock
            current = os.stat(lock).st_ino
        except FileNotFoundError:
            current = None
        if current == os.fstat(fd).st_ino:
            break
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        yield path
    finally:
        try:
            lock.unlink(missing_ok=True)
        except OSError:
            pass
        os.close(fd)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` to `path` so that `path` holds either its old content or all of `data`, never a part."""
    path = Path(path)
    try:
        with atomic_path(path, keep_suffix=False) as temporary, open(temporary, "xb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
    except OSError as error:
        raise _cannot_write(path, error) from error


def atomic_write_text(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> None:
    """`atomic_write_bytes` for text."""
    atomic_write_bytes(path, text.encode(encoding))


def _encode_mp4(path: Path, frames: np.ndarray, fps: float) -> None:
    """H.264 (yuv420p, CRF `MP4_CRF`) into an .mp4; frames must have even height and width."""
    _, height, width, _ = frames.shape
    with av.open(str(path), mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(10_000))
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"crf": str(MP4_CRF), "preset": "medium"}
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())     # flush the encoder


def _encode_gif(path: Path, frames: np.ndarray, fps: float) -> None:
    """Looping gif, one adaptive palette per frame.

    Pillow merges identical consecutive frames into one longer frame, so a still stretch reads back as fewer frames.
    """
    images = [Image.fromarray(frame) for frame in frames]
    images[0].save(path, format="GIF", save_all=True, append_images=images[1:],
                   duration=round(1000.0 / fps), loop=0)


def write_video(path: str | os.PathLike, frames: np.ndarray, fps: float, *, min_size: int = 0) -> None:
    """Write (F, H, W, 3) uint8 RGB frames as an H.264 .mp4 or a .gif, atomically.

    For the mp4, an odd height or width is made even by repeating the last row or column (yuv420p needs even
    sizes). `min_size` > 0 enlarges small frames by an integer factor, nearest neighbour, until the shorter side
    is at least `min_size` pixels, for viewing; 0 writes the frames at their own size.
    Raises `OutputError` when the file cannot be written.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in WRITE_SUFFIXES:
        raise OutputError(f"Cannot write {path}: videos are written as {' or '.join(WRITE_SUFFIXES)}; "
                          f"choose one of those extensions.")
    if not fps > 0:
        raise ValueError(f"fps must be positive, got {fps}")
    check_frames(frames)
    shorter = min(frames.shape[1:3])
    if min_size > shorter:
        factor = math.ceil(min_size / shorter)
        frames = frames.repeat(factor, axis=1).repeat(factor, axis=2)
    if suffix == ".mp4":
        odd_h, odd_w = frames.shape[1] % 2, frames.shape[2] % 2
        if odd_h or odd_w:
            frames = np.pad(frames, ((0, 0), (0, odd_h), (0, odd_w), (0, 0)), mode="edge")
        encode = _encode_mp4
    else:
        encode = _encode_gif
    try:
        with atomic_path(path) as temporary:
            encode(temporary, frames, fps)
    except (OSError, av.FFmpegError) as error:
        raise _cannot_write(path, error) from error
    logger.debug("wrote %d frames to %s", len(frames), path)


def write_frames(directory: str | os.PathLike, frames: np.ndarray, *, prefix: str = "", digits: int = 4,
                 overwrite: bool = False) -> Path:
    """Write each frame as `<prefix>0000.png`, ... into `directory`, which appears whole or not at all.

    An existing `directory` raises `OutputError` unless `overwrite`, in which case it is replaced.
    Returns the directory.
    """
    directory = Path(directory)
    check_frames(frames)
    if directory.exists() and not overwrite:
        raise OutputError(f"{directory} already exists; choose another --output-dir or pass --overwrite.")
    if directory.exists() and not directory.is_dir():
        raise OutputError(f"{directory} is a file, not a folder; choose another --output-dir.")
    try:
        with atomic_path(directory, keep_suffix=False) as temporary:
            temporary.mkdir()
            for index, frame in enumerate(frames):
                Image.fromarray(frame).save(temporary / f"{prefix}{index:0{digits}d}.png")
    except OSError as error:
        raise _cannot_write(directory, error) from error
    return directory


def check_writable_dir(path: str | os.PathLike) -> Path:
    """Create `path` (and its parents) if needed and check that a file can be created in it; returns it."""
    path = Path(path)
    probe = path / f".write-check-{os.getpid()}-{secrets.token_hex(4)}"
    try:
        path.mkdir(parents=True, exist_ok=True)
        os.close(os.open(probe, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
        probe.unlink()
    except OSError as error:
        reason = "it is a file" if path.is_file() else (error.strerror or str(error))
        raise OutputError(f"Cannot write to {path}: {reason}. Choose another --output-dir.") from error
    return path


def frames_digest(frames: np.ndarray) -> str:
    """Hex sha256 of the array's dtype, shape and bytes: equal frames give equal keys, for caches."""
    digest = hashlib.sha256(repr((frames.dtype.str, frames.shape)).encode())
    digest.update(memoryview(np.ascontiguousarray(frames)).cast("B"))
    return digest.hexdigest()
