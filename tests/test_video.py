import os

import av
import numpy as np
import pytest
from PIL import Image

from motiontransfer import video
from motiontransfer.errors import OutputError, VideoError
from motiontransfer.video import (
    atomic_write_bytes, atomic_write_text, check_writable_dir, frames_digest, read_video, resize_frames,
    side_by_side, write_frames, write_video,
)


def smooth_video(frames=12, height=48, width=64):
    """Gradients drifting over time: (F, H, W, 3) uint8, easy for a video codec."""
    t, y, x = np.meshgrid(np.arange(frames), np.arange(height), np.arange(width), indexing="ij")
    red = 128 + 100 * np.sin(2 * np.pi * (x / width + t / frames))
    green = 40 + 180 * y / height
    blue = 128 + 90 * np.cos(2 * np.pi * (x + y) / (width + height) - t / frames)
    return np.stack([red, green, blue], axis=-1).round().astype(np.uint8)


def psnr(a, b):
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return 10 * np.log10(255 ** 2 / mse)


def index_folder(directory, count, name=lambda i: f"{i:04d}.png"):
    """A folder of 4x6 PNGs whose red channel holds the frame index; written in reverse order."""
    directory.mkdir()
    for i in reversed(range(count)):
        Image.fromarray(np.full((4, 6, 3), (i, 7, 9), np.uint8)).save(directory / name(i))
    return directory


def indices(frames):
    return frames[:, 0, 0, 0].tolist()


# ------------------------------------------------------------------------------------------------- reading

def test_mp4_round_trip_is_close(tmp_path):
    frames = smooth_video()
    write_video(tmp_path / "clip.mp4", frames, fps=12)
    clip = read_video(tmp_path / "clip.mp4")
    assert clip.frames.shape == frames.shape and clip.frames.dtype == np.uint8
    assert clip.fps == pytest.approx(12)
    assert clip.source == str(tmp_path / "clip.mp4")
    assert psnr(clip.frames, frames) > 30


def test_mp4_selection_and_fps(tmp_path):
    flat = np.repeat(np.arange(0, 200, 10, dtype=np.uint8), 16 * 16 * 3).reshape(20, 16, 16, 3)
    write_video(tmp_path / "clip.mp4", flat, fps=12)
    clip = read_video(tmp_path / "clip.mp4", frames=3, stride=3, start=2)
    assert clip.fps == pytest.approx(4)
    np.testing.assert_allclose(clip.frames.mean(axis=(1, 2, 3)), [20, 50, 80], atol=2)


def test_mp4_odd_size_is_padded_and_min_size_enlarges(tmp_path):
    frames = smooth_video(frames=3, height=21, width=33)
    write_video(tmp_path / "odd.mp4", frames, fps=8)
    assert read_video(tmp_path / "odd.mp4").frames.shape == (3, 22, 34, 3)
    write_video(tmp_path / "big.mp4", frames[:, :16, :16], fps=8, min_size=40)
    assert read_video(tmp_path / "big.mp4").frames.shape == (3, 48, 48, 3)   # factor 3, nearest


def test_gif_round_trip(tmp_path):
    frames = smooth_video(frames=6, height=24, width=32)
    write_video(tmp_path / "clip.gif", frames, fps=10)
    clip = read_video(tmp_path / "clip.gif")
    assert clip.frames.shape == frames.shape
    assert clip.fps == pytest.approx(10)
    assert np.abs(clip.frames.astype(int) - frames).mean() < 8     # palette quantisation only
    assert read_video(tmp_path / "clip.gif", stride=2).fps == pytest.approx(5)


def test_gif_transparency_is_black(tmp_path):
    palette = [255, 0, 0] + [0, 255, 0] + [0, 0, 0] * 254
    images = []
    for pixels in ([[0, 1], [1, 0]], [[1, 0], [0, 1]]):
        image = Image.fromarray(np.array(pixels, np.uint8), mode="P")
        image.putpalette(palette)
        images.append(image)
    images[0].save(tmp_path / "t.gif", save_all=True, append_images=images[1:], transparency=0, duration=50,
                   disposal=2)
    clip = read_video(tmp_path / "t.gif")
    assert clip.fps == pytest.approx(20)
    np.testing.assert_array_equal(clip.frames[0, 0, 0], [0, 0, 0])     # transparent red -> black
    np.testing.assert_array_equal(clip.frames[0, 0, 1], [0, 255, 0])


def test_folder_natural_order(tmp_path):
    clip = read_video(index_folder(tmp_path / "plain", 11, name=lambda i: f"{i}.png"))
    assert indices(clip.frames) == list(range(11))      # 10.png after 9.png
    assert clip.fps == video.FOLDER_FPS

    mixed = {1: "frame_001.png", 2: "frame_2.png", 3: "frame_0003.jpg", 10: "frame_10.png"}
    directory = tmp_path / "mixed"
    directory.mkdir()
    for i, name in mixed.items():
        Image.fromarray(np.full((4, 6, 3), i * 20, np.uint8)).save(directory / name)
    (directory / "notes.txt").write_text("not a frame")
    (directory / "sub.png").mkdir()
    assert np.round(read_video(directory).frames[:, 0, 0, 0] / 20).tolist() == [1, 2, 3, 10]


@pytest.mark.parametrize("frames, stride, start, expected", [
    (None, 1, 0, list(range(20))),
    (5, 1, 0, [0, 1, 2, 3, 4]),
    (4, 3, 2, [2, 5, 8, 11]),
    (None, 4, 3, [3, 7, 11, 15, 19]),
    (1, 1, 19, [19]),
    (2, 19, 0, [0, 19]),
])
def test_folder_selection(tmp_path, frames, stride, start, expected):
    clip = read_video(index_folder(tmp_path / "f", 20), frames=frames, stride=stride, start=start)
    assert indices(clip.frames) == expected
    assert clip.fps == pytest.approx(video.FOLDER_FPS / stride)


def test_too_few_frames_names_both_counts(tmp_path):
    with pytest.raises(VideoError, match="has 10 frames; 24 are needed.*--frames 10 or fewer"):
        read_video(index_folder(tmp_path / "f", 10), frames=24)
    write_video(tmp_path / "video.mp4", smooth_video(frames=10, height=16, width=16), fps=8)
    with pytest.raises(VideoError) as caught:
        read_video(tmp_path / "video.mp4", frames=5, stride=2, start=2)
    assert str(caught.value) == ("video.mp4 has 10 frames; 11 are needed (start 2, stride 2). "
                                 "Pass --frames 4 or fewer, or a lower --stride.")
    assert read_video(tmp_path / "video.mp4", frames=5, stride=2).frames.shape[0] == 5
    with pytest.raises(VideoError, match="start 12 is past its end"):
        read_video(tmp_path / "video.mp4", start=12)


def test_undecodable_files(tmp_path):
    (tmp_path / "random.mp4").write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(VideoError, match="could not be decoded.*ffmpeg"):
        read_video(tmp_path / "random.mp4")
    (tmp_path / "text.mp4").write_text("this is not a video\n" * 20)
    with pytest.raises(VideoError, match="could not be decoded"):
        read_video(tmp_path / "text.mp4")
    (tmp_path / "broken.gif").write_bytes(b"GIF89a" + bytes(10))
    with pytest.raises(VideoError, match="could not be decoded"):
        read_video(tmp_path / "broken.gif")


def test_audio_only_has_no_video_stream(tmp_path):
    with av.open(str(tmp_path / "sound.mp4"), "w") as container:
        stream = container.add_stream("aac", rate=44100)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
        frame.sample_rate = 44100
        container.mux(stream.encode(frame))
        container.mux(stream.encode())
    with pytest.raises(VideoError, match="no video stream"):
        read_video(tmp_path / "sound.mp4")


def test_path_errors(tmp_path):
    with pytest.raises(VideoError, match="does not exist"):
        read_video(tmp_path / "missing.mp4")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.md").write_text("no frames here")
    with pytest.raises(VideoError, match="holds no images"):
        read_video(tmp_path / "empty")
    (tmp_path / "clip.flv").write_bytes(b"x")
    with pytest.raises(VideoError, match=r"unsupported type '\.flv'.*\.mp4.*\.gif"):
        read_video(tmp_path / "clip.flv")


@pytest.mark.parametrize("kwargs", [{"frames": 0}, {"stride": 0}, {"start": -1}])
def test_invalid_selection(tmp_path, kwargs):
    with pytest.raises(VideoError, match="must be"):
        read_video(index_folder(tmp_path / "f", 3), **kwargs)


def test_folder_frames_of_different_sizes_are_fitted_like_the_first(tmp_path, caplog):
    """Issue 27, item 14: every frame is resized to the model anyway; one line says so."""
    directory = index_folder(tmp_path / "f", 3)
    Image.fromarray(np.full((5, 5, 3), 200, np.uint8)).save(directory / "0003.png")
    with caplog.at_level("WARNING"):
        video = read_video(directory)
    first = video.frames[0]
    assert video.frames.shape[1:] == first.shape and (video.frames[-1] == 200).all()
    assert caplog.text.count("resized to the first's") == 1


def test_truncated_gif_and_latin1_metadata_are_handled(tmp_path):
    from motiontransfer.video import write_video

    frames = np.zeros((4, 16, 16, 3), np.uint8)
    frames[:, 4:8, 4:8] = 255
    write_video(tmp_path / "a.gif", frames, 8.0)
    data = (tmp_path / "a.gif").read_bytes()
    (tmp_path / "cut.gif").write_bytes(data[:len(data) * 2 // 3])
    try:
        read_video(tmp_path / "cut.gif")
    except VideoError:
        pass                                           # a clear error is fine, a traceback is not
    import av

    path = tmp_path / "latin1.mp4"
    with av.open(str(path), "w") as container:
        container.metadata["title"] = "caf\xe9"
        stream = container.add_stream("libx264", rate=8)
        stream.width, stream.height, stream.pix_fmt = 16, 16, "yuv420p"
        for f in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    raw = path.read_bytes()
    assert "caf\xe9".encode() in raw
    path.write_bytes(raw.replace("caf\xe9".encode(), b"caf\xe9\xe9", 1))      # Latin-1 bytes, same length
    assert read_video(path).frames.shape == (4, 16, 16, 3)


def test_too_few_frames_for_any_transfer_says_so(tmp_path):
    with pytest.raises(VideoError, match="at least 2 frames"):
        read_video(index_folder(tmp_path / "f", 3), frames=2, start=2)


# ------------------------------------------------------------------------------------------------ resizing

def marker_frames(height, width, size=4):
    """Black frames with a white square of `size` pixels at the centre."""
    frames = np.zeros((2, height, width, 3), np.uint8)
    y0, x0 = (height - size) // 2, (width - size) // 2
    frames[:, y0:y0 + size, x0:x0 + size] = 255
    return frames


def centroid(frame):
    ys, xs = np.nonzero(frame[..., 0] > 127)
    return ys.mean(), xs.mean()


@pytest.mark.parametrize("policy", ["crop", "stretch", "pad"])
@pytest.mark.parametrize("source", [(48, 64), (64, 48), (30, 30)])
def test_resize_shapes(policy, source):
    out = resize_frames(marker_frames(*source), 40, 24, policy)
    assert out.shape == (2, 24, 40, 3) and out.dtype == np.uint8
    assert centroid(out[0]) == pytest.approx((11.5, 19.5), abs=0.6)


def test_crop_keeps_the_centre():
    frames = marker_frames(40, 100)
    frames[:, :, :10] = 255          # side bars outside the central square crop
    frames[:, :, -10:] = 255
    out = resize_frames(frames, 20, 20, "crop")
    assert out[:, :, :3].max() == 0 and out[:, :, -3:].max() == 0
    assert centroid(out[0]) == pytest.approx((9.5, 9.5), abs=0.5)


def test_pad_adds_black_bars():
    frames = np.full((1, 16, 32, 3), 200, np.uint8)
    out = resize_frames(frames, 32, 32, "pad")
    assert out[:, :8].max() == 0 and out[:, 24:].max() == 0
    assert (out[:, 8:24] == 200).all()


def test_resize_enlarging_stays_in_range_and_rejects_unknown_policy():
    frames = np.zeros((1, 8, 8, 3), np.uint8)
    frames[:, ::2] = 255                # hard edges make bicubic overshoot, which must be clipped
    assert resize_frames(frames, 32, 32, "stretch").shape == (1, 32, 32, 3)
    with pytest.raises(ValueError, match="crop, stretch, pad"):
        resize_frames(frames, 8, 8, "fit")


def test_side_by_side():
    a = np.zeros((5, 32, 32, 3), np.uint8)
    b = np.full((4, 16, 24, 3), 100, np.uint8)
    out = side_by_side(a, b, gap=4)
    assert out.shape == (4, 32, 32 + 4 + 48, 3)
    assert (out[:, :, 32:36] == 255).all() and (out[:, :, 36:] == 100).all() and (out[:, :, :32] == 0).all()


# ------------------------------------------------------------------------------------------------- writing

def test_write_video_leaves_no_temporary_files(tmp_path):
    for name in ("out.mp4", "out.gif"):
        write_video(tmp_path / name, smooth_video(frames=3, height=16, width=16), fps=8)
    assert sorted(os.listdir(tmp_path)) == ["out.gif", "out.mp4"]


def test_failed_write_video_leaves_nothing(tmp_path, monkeypatch):
    def failing(path, frames, fps):
        path.write_bytes(b"half a video")
        raise RuntimeError("encoder exploded")

    monkeypatch.setattr(video, "_encode_mp4", failing)
    with pytest.raises(RuntimeError, match="exploded"):
        write_video(tmp_path / "out.mp4", smooth_video(frames=3, height=16, width=16), fps=8)
    assert os.listdir(tmp_path) == []


def test_write_video_errors(tmp_path):
    frames = smooth_video(frames=2, height=8, width=8)
    with pytest.raises(OutputError, match=r"\.mp4 or \.gif"):
        write_video(tmp_path / "out.avi", frames, fps=8)
    with pytest.raises(OutputError, match="Cannot write"):
        write_video(tmp_path / "missing" / "out.mp4", frames, fps=8)
    with pytest.raises(ValueError, match=r"\(F, H, W, 3\)"):
        write_video(tmp_path / "out.mp4", frames[..., 0], fps=8)


def test_atomic_write_text_and_bytes(tmp_path):
    target = tmp_path / "run.json"
    atomic_write_text(target, '{"seed": 0}\n')
    assert target.read_text() == '{"seed": 0}\n'
    with pytest.raises(TypeError):
        atomic_write_bytes(target, "not bytes")     # fails after the temporary file is open
    assert target.read_text() == '{"seed": 0}\n'
    assert os.listdir(tmp_path) == ["run.json"]


def test_write_frames(tmp_path):
    frames = smooth_video(frames=3, height=8, width=10)
    target = tmp_path / "frames"
    write_frames(target, frames)
    assert sorted(os.listdir(target)) == ["0000.png", "0001.png", "0002.png"]
    np.testing.assert_array_equal(read_video(target).frames, frames)
    with pytest.raises(OutputError, match="already exists"):
        write_frames(target, frames[:1])
    write_frames(target, frames[:1], prefix="f", digits=2, overwrite=True)
    assert os.listdir(target) == ["f00.png"]
    assert os.listdir(tmp_path) == ["frames"]


def test_check_writable_dir(tmp_path):
    nested = check_writable_dir(tmp_path / "a" / "b")
    assert nested.is_dir() and os.listdir(nested) == []
    (tmp_path / "file.txt").write_text("a file")
    with pytest.raises(OutputError, match=r"Cannot write to .*sub: .*Choose another --output-dir\."):
        check_writable_dir(tmp_path / "file.txt" / "sub")
    with pytest.raises(OutputError, match="it is a file"):
        check_writable_dir(tmp_path / "file.txt")


def test_frames_digest():
    frames = smooth_video(frames=2, height=8, width=8)
    assert frames_digest(frames) == frames_digest(frames.copy())
    assert frames_digest(frames) != frames_digest(frames.reshape(2, 8, 4, 6))
    changed = frames.copy()
    changed[1, 7, 7, 2] ^= 1
    assert frames_digest(frames) != frames_digest(changed)
    assert frames_digest(frames[:, ::-1]) == frames_digest(np.ascontiguousarray(frames[:, ::-1]))


# ------------------------------------------------------------------------------------ region and fit description

def test_crop_region_cuts_the_box_and_checks_bounds():
    frames = np.arange(2 * 6 * 8 * 3, dtype=np.uint8).reshape(2, 6, 8, 3)
    out = video.crop_region(frames, (2, 1, 4, 3))
    np.testing.assert_array_equal(out, frames[:, 1:4, 2:6])
    with pytest.raises(VideoError, match="inside the 8x6 frame"):
        video.crop_region(frames, (5, 0, 4, 3))


@pytest.mark.parametrize("policy,size,expected,hint", [
    ("crop", (768, 576), "centre crop keeps columns 96-671 (75% of the width); resized to 64x64 (0.11x)", True),
    ("crop", (300, 400), "centre crop keeps rows 50-349 (75% of the height); resized to 64x64 (0.21x)", True),
    ("pad", (768, 576), "padded with black to the model's aspect; resized to 64x64 (0.083x)", True),
    ("stretch", (128, 64), "stretched to the model's aspect; resized to 64x64 (0.5x)", False),
    ("crop", (128, 128), "resized to 64x64 (0.5x)", False),
])
def test_describe_fit_says_what_is_kept(policy, size, expected, hint):
    text = video.describe_fit(*size, 64, 64, policy)
    assert text.startswith(f"source {size[0]}x{size[1]}; ")
    assert expected in text
    assert ("--region" in text) == hint          # below a quarter of the size, small objects vanish


def test_describe_fit_with_a_region():
    text = video.describe_fit(768, 576, 64, 64, "crop", (100, 200, 160, 160))
    assert text == "region 160x160 at (100, 200) of 768x576; resized to 64x64 (0.4x)"


def test_frames_are_fitted_as_they_are_decoded(tmp_path):
    """`fit` runs on each frame as it comes (one source-sized frame held at a time); the source's size is kept."""
    from motiontransfer.video import write_video

    frames = np.random.default_rng(0).integers(0, 255, (6, 48, 64, 3), dtype=np.uint8)
    write_video(tmp_path / "a.gif", frames, 8.0)
    seen = []

    def fit(frame):
        seen.append(frame.shape)
        return frame[::4, ::4]

    video = read_video(tmp_path / "a.gif", fit=fit)
    assert seen == [(48, 64, 3)] * 6 and video.frames.shape == (6, 12, 16, 3) and video.size == (64, 48)
    np.testing.assert_array_equal(video.frames, read_video(tmp_path / "a.gif").frames[:, ::4, ::4])
