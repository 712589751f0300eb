"""Input limits: checked from the file's size and header before anything is decoded, one-line errors, flags
to raise them; every reader takes only the frames it needs."""

import io
import os
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from motiontransfer import cli
from motiontransfer.config import InputLimits
from motiontransfer.errors import ConfigError, VideoError
from motiontransfer.video import read_video, write_video

from conftest import moving_square

SRC = str(Path(__file__).resolve().parents[1] / "src")


def tiny_gif_declaring(path: Path, side: int) -> Path:
    """An 8x8 gif whose header declares a side x side canvas: a few dozen bytes."""
    buffer = io.BytesIO()
    Image.new("P", (8, 8)).save(buffer, format="GIF")
    data = bytearray(buffer.getvalue())
    data[6:10] = struct.pack("<HH", side, side)
    path.write_bytes(bytes(data))
    return path


def run_capped(code: str, limit_bytes: int = 1 << 30) -> subprocess.CompletedProcess:
    """`code` in a fresh interpreter whose address space is capped (torch is not imported by video.py)."""
    prelude = f"import resource; resource.setrlimit(resource.RLIMIT_AS, ({limit_bytes}, {limit_bytes}))\n"
    env = {**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-c", prelude + code], capture_output=True, text=True, env=env,
                          timeout=120)


@pytest.mark.parametrize("side", [10_000, 60_000])
def test_a_gif_declaring_a_huge_canvas_is_refused_before_decoding(tmp_path, side):
    gif = tiny_gif_declaring(tmp_path / "bomb.gif", side)
    assert gif.stat().st_size < 500
    done = run_capped(f"from motiontransfer.video import read_video\n"
                      f"from motiontransfer.errors import VideoError\n"
                      f"try:\n    read_video({str(gif)!r})\n"
                      f"except VideoError as e:\n    print('refused:', e)\n")
    assert done.returncode == 0, done.stderr
    line = done.stdout.strip()
    assert line.startswith("refused:") and "\n" not in line and len(line) < 400
    assert "--max-frame-pixels" in line or "too large to decode safely" in line


def test_the_bomb_is_one_line_on_the_command_line(tmp_path, capsys):
    gif = tiny_gif_declaring(tmp_path / "bomb.gif", 60_000)
    code = cli.main(["score", str(gif), str(gif)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and err.startswith("error:") and "Traceback" not in err


def test_frame_count_limit_and_its_flag(tmp_path):
    path = tmp_path / "clip.mp4"
    write_video(path, moving_square(12, 32), 8.0)
    with pytest.raises(VideoError, match="--max-frames"):
        read_video(path, limits=InputLimits(max_frames=10))
    with pytest.raises(VideoError, match="--max-frames"):
        read_video(path, frames=11, limits=InputLimits(max_frames=10))
    assert len(read_video(path, limits=InputLimits(max_frames=12)).frames) == 12
    # a long source is fine when only a few frames are read
    assert len(read_video(path, frames=4, limits=InputLimits(max_frames=4)).frames) == 4


@pytest.mark.parametrize("kind", ["mp4", "gif", "folder"])
def test_pixel_limits_hold_for_every_input_kind(tmp_path, kind):
    frames = moving_square(6, 32)
    if kind == "folder":
        path = tmp_path / "frames"
        path.mkdir()
        for i, frame in enumerate(frames):
            Image.fromarray(frame).save(path / f"{i}.png")
    else:
        path = tmp_path / f"clip.{kind}"
        write_video(path, frames, 8.0)
    with pytest.raises(VideoError, match="--max-frame-pixels") as error:
        read_video(path, limits=InputLimits(max_frame_pixels=32 * 32 - 1))
    assert "\n" not in str(error.value)
    with pytest.raises(VideoError, match="--max-total-pixels"):
        read_video(path, limits=InputLimits(max_total_pixels=5 * 32 * 32))
    assert len(read_video(path, frames=5, limits=InputLimits(max_total_pixels=5 * 32 * 32)).frames) == 5
    with pytest.raises(VideoError, match="--max-file-mb"):
        read_video(path, limits=InputLimits(max_file_mb=1e-6))


def test_limits_must_be_positive():
    with pytest.raises(ConfigError, match="--max-frames"):
        InputLimits(max_frames=0)


def test_transfer_flags_raise_the_limits(tiny_model, tmp_path, capsys):
    path = tmp_path / "clip.mp4"
    write_video(path, moving_square(4, 32), 8.0)
    argv = ["transfer", str(path), "--prompt", "a green star", "--model", str(tiny_model), "--steps", "2",
            "--iterations", "1", "--seed", "0", "--quiet", "--cache-dir", str(tmp_path / "cache")]
    code = cli.main(argv + ["--output-dir", str(tmp_path / "a"), "--max-frame-pixels", "1000"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "--max-frame-pixels 1024" in err
    assert not (tmp_path / "a").exists()
    assert cli.main(argv + ["--output-dir", str(tmp_path / "b"), "--max-frame-pixels", "1024"]) == 0


def test_score_reads_only_as_many_original_frames_as_the_edited_video_has(tmp_path, capsys):
    original, edited = tmp_path / "original.mp4", tmp_path / "edited.mp4"
    write_video(original, moving_square(30, 32), 8.0)
    write_video(edited, moving_square(6, 32), 8.0)
    code = cli.main(["score", str(original), str(edited), "--max-frames", "6", "--grid", "5"])
    assert code == 0, capsys.readouterr().err
    assert '"frames_original": 6' in capsys.readouterr().out


def test_demo_with_a_video_reads_only_the_frames_the_model_needs(tiny_model, tmp_path):
    from motiontransfer.shapes.demo import demo

    path = tmp_path / "long.mp4"
    write_video(path, moving_square(40, 32), 8.0)
    done = demo(video=path, prompt="a green star", output_dir=tmp_path / "demo", quiet=True, model=str(tiny_model),
                steps=2, iterations=1, cache_dir=str(tmp_path / "cache"), limits=InputLimits(max_frames=4))
    assert done.transfer.frames.shape[0] == 4
