"""Tests of the synthetic world: determinism, ground truth against the rendered pixels, captions, speed."""

import dataclasses
import itertools
import math
import time

import cv2
import numpy as np
import pytest

from motiontransfer.shapes import world


def _static(params: world.ClipParams) -> world.ClipParams:
    """The same clip without rotation."""
    return dataclasses.replace(params, spin=0.0)


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / (a | b).sum())


def _lab(rgb) -> np.ndarray:
    """CIELAB (L in 0..100) of one RGB uint8 colour."""
    lab = cv2.cvtColor(np.array([[rgb]], np.uint8), cv2.COLOR_RGB2LAB)[0, 0].astype(np.float64)
    return lab * [100 / 255, 1, 1] - [0, 128, 128]


def test_same_seed_same_dataset():
    a = world.make_dataset(6, seed=3, masks=True)
    b = world.make_dataset(6, seed=3, masks=True)
    for key in ("frames", "masks", "shape", "colour", "background", "motion", "centres", "sizes", "angles"):
        np.testing.assert_array_equal(a[key], b[key])
    assert a["captions"] == b["captions"] and a["params"] == b["params"]
    c = world.make_dataset(6, seed=4)
    assert not np.array_equal(a["frames"], c["frames"])


def test_render_is_deterministic_given_params():
    params = world.sample_params(np.random.default_rng(0))
    a, b = world.render(params, 48, 5), world.render(params, 48, 5)
    np.testing.assert_array_equal(a.frames, b.frames)
    np.testing.assert_array_equal(a.masks, b.masks)


@pytest.mark.parametrize("size,frames", [(32, 16), (48, 5), (20, 1)])
def test_clip_shapes_and_dtypes(size, frames):
    clip = world.sample_clip(np.random.default_rng(1), size=size, frames=frames)
    assert clip.frames.shape == (frames, size, size, 3) and clip.frames.dtype == np.uint8
    assert clip.masks.shape == (frames, size, size) and clip.masks.dtype == bool
    assert clip.centres.shape == (frames, 2) and clip.centres.dtype == np.float32
    assert clip.sizes.shape == (frames,) and clip.sizes.dtype == np.float32
    assert clip.angles.shape == (frames,) and clip.angles.dtype == np.float32
    assert clip.masks.any(axis=(1, 2)).all()


def test_dataset_layout():
    data = world.make_dataset(5, seed=0, size=24, frames=4)
    assert data["frames"].shape == (5, 4, 24, 24, 3) and data["frames"].dtype == np.uint8
    assert data["centres"].shape == (5, 4, 2) and data["sizes"].shape == (5, 4) and data["angles"].shape == (5, 4)
    assert "masks" not in data and len(data["captions"]) == 5
    for i, params in enumerate(data["params"]):
        assert world.SHAPES[data["shape"][i]] == params.shape
        assert list(world.COLOURS)[data["colour"][i]] == params.colour
        assert list(world.BACKGROUNDS)[data["background"][i]] == params.background
        assert world.MOTIONS[data["motion"][i]] == params.motion
        assert data["shape"].dtype == np.int64


def test_centre_from_mask_convention():
    mask = np.zeros((5, 6), bool)
    mask[2, 3] = True                        # row 2, column 3: the pixel's centre is (3.5, 2.5)
    np.testing.assert_allclose(world.centre_from_mask(mask), [3.5, 2.5])
    mask[2, 4] = True
    np.testing.assert_allclose(world.centre_from_mask(mask), [4.0, 2.5])
    assert np.isnan(world.centre_from_mask(np.zeros((4, 4), bool))).all()
    assert world.centre_from_mask(np.zeros((3, 4, 4), bool)).shape == (3, 2)


def test_centres_match_mask_centroids_at_64():
    rng = np.random.default_rng(2)
    errors = []
    for _ in range(40):
        clip = world.render(_static(world.sample_params(rng)), size=64)
        errors.append(np.linalg.norm(world.centre_from_mask(clip.masks) - clip.centres, axis=1))
    errors = np.concatenate(errors)
    assert np.median(errors) < 0.3, np.median(errors)
    assert np.percentile(errors, 95) < 0.4


def test_static_object_at_rest_is_centred():
    for shape in world.SHAPES:
        params = world.ClipParams(shape, "red", "black", "linear", x0=0.53, y0=0.41, size0=0.2)
        clip = world.render(params, size=64, frames=1)
        np.testing.assert_allclose(clip.centres[0], [0.53 * 64, 0.41 * 64], atol=1e-4)
        assert np.linalg.norm(world.centre_from_mask(clip.masks[0]) - clip.centres[0]) < 0.3, shape


def test_objects_stay_inside_the_frame():
    data = world.make_dataset(200, seed=5)
    reach = data["sizes"][..., None]
    assert (data["centres"] - reach >= -1e-3).all() and (data["centres"] + reach <= 32 + 1e-3).all()
    assert 4.0 <= data["sizes"].min() and data["sizes"].max() <= 8.01      # 8 to 16 px across at 32x32


@pytest.mark.parametrize("background", list(world.BACKGROUNDS))
def test_object_and_background_colours(background):
    """Every pixel is the object colour blended over the background, at least half object inside the mask."""
    bg = np.array(world.BACKGROUNDS[background], np.float64)
    kernel = np.ones((3, 3), np.uint8)
    for colour in world.allowed_colours(background):
        obj = np.array(world.COLOURS[colour], np.float64)
        params = world.sample_params(np.random.default_rng(len(colour)), colour=colour, background=background)
        clip = world.render(params, size=64, frames=3)
        for frame, mask in zip(clip.frames, clip.masks):
            alpha = (frame - bg) @ (obj - bg) / ((obj - bg) @ (obj - bg))               # (H, W) blend weight
            residual = frame - (bg + alpha[..., None] * (obj - bg))
            assert np.abs(residual).max() < 1.0
            assert (alpha[mask] >= 0.5 - 1e-2).all() and (alpha[~mask] < 0.5 + 1e-2).all()
            assert (frame[mask] == obj).all(axis=-1).mean() > 0.5
            outer = ~cv2.dilate(mask.astype(np.uint8), kernel).astype(bool)
            assert outer.any() and (frame[outer] == bg).all()


def test_forbidden_pairs_are_the_low_contrast_ones_and_never_sampled():
    for colour, background in itertools.product(world.COLOURS, world.BACKGROUNDS):
        contrast = np.linalg.norm(_lab(world.COLOURS[colour]) - _lab(world.BACKGROUNDS[background]))
        assert ((colour, background) in world.FORBIDDEN) == (contrast < world.MIN_CONTRAST), (colour, background)
    for a, b in itertools.combinations(world.COLOURS.values(), 2):
        assert np.linalg.norm(_lab(a) - _lab(b)) > 40
    with pytest.raises(ValueError):
        world.sample_params(np.random.default_rng(0), colour="blue", background="navy")
    rng = np.random.default_rng(6)
    assert all((p.colour, p.background) not in world.FORBIDDEN for p in (world.sample_params(rng) for _ in range(500)))


def test_sampling_is_balanced():
    rng = np.random.default_rng(7)
    params = [world.sample_params(rng) for _ in range(3000)]
    for field, names in (("shape", world.SHAPES), ("colour", world.COLOURS), ("background", world.BACKGROUNDS),
                         ("motion", world.MOTIONS)):
        counts = np.array([sum(getattr(p, field) == name for p in params) for name in names])
        expected = len(params) / len(names)
        assert np.abs(counts - expected).max() < 0.2 * expected, (field, counts)
    assert abs(np.mean([p.spin == 0 for p in params]) - 0.25) < 0.04
    assert abs(np.mean([p.size_ratio == 1 for p in params]) - 0.3) < 0.04
    np.testing.assert_allclose(world.PAIR_PROBABILITIES.sum(axis=1), 1 / len(world.COLOURS))
    np.testing.assert_allclose(world.PAIR_PROBABILITIES.sum(axis=0), 1 / len(world.BACKGROUNDS))


def test_fixing_one_attribute_keeps_the_others():
    free = world.sample_params(np.random.default_rng(8))
    shape = next(s for s in world.SHAPES if s != free.shape)
    fixed = world.sample_params(np.random.default_rng(8), shape=shape)
    assert fixed == dataclasses.replace(free, shape=shape)


def test_invalid_params_are_rejected():
    with pytest.raises(ValueError):
        world.ClipParams("hexagon", "red", "black", "linear", 0.5, 0.5)
    with pytest.raises(ValueError):
        world.ClipParams("star", "red", "black", "teleport", 0.5, 0.5)
    with pytest.raises(ValueError):
        world.ClipParams("star", "red", "black", "pause", 0.5, 0.5, pause_start=0.6, pause_end=0.4)
    with pytest.raises(ValueError):
        world.sample_params(np.random.default_rng(0), colour="teal")


def test_captions_use_the_vocabulary_and_parse_back():
    vocabulary = world.vocabulary()
    assert vocabulary == sorted(set(vocabulary))
    assert all(word.isalpha() and word.islower() for word in vocabulary)
    rng = np.random.default_rng(9)
    cases = [world.sample_params(rng, motion=m) for m in world.MOTIONS for _ in range(3)]
    cases += [world.ClipParams("star", "red", "white", "linear", 0.5, 0.5, dx=math.cos(a), dy=math.sin(a))
              for a in np.arange(8) * math.pi / 4]
    seen = set()
    for params in cases:
        for phrase in (False, True):
            text = world.caption(params, motion_phrase=phrase)
            assert set(text.split()) <= set(vocabulary), text
            assert len(text.split()) <= 13
            parsed = world.parse_caption(text)
            assert parsed == {"colour": params.colour, "shape": params.shape, "background": params.background,
                              "motion": params.motion if phrase else None}, text
            seen.add(text)
    assert "a red star moving left on a white background" in seen
    assert "a red star moving up and right on a white background" in seen    # dy < 0 is up on screen


def test_parse_caption_of_free_prompts():
    assert world.parse_caption("A Yellow HEART, bouncing around on a navy background!") == {
        "colour": "yellow", "shape": "heart", "background": "navy", "motion": "bounce"}
    assert world.parse_caption("a star") == {"colour": None, "shape": "star", "background": None, "motion": None}
    assert world.parse_caption("a square on a black background")["colour"] is None


def test_sample_clip_motion_phrase_probability():
    rng = np.random.default_rng(10)
    never = [world.sample_clip(rng, size=8, frames=2, motion_phrase_prob=0.0).caption for _ in range(20)]
    always = [world.sample_clip(rng, size=8, frames=2, motion_phrase_prob=1.0).caption for _ in range(20)]
    assert all(world.parse_caption(c)["motion"] is None for c in never)
    assert all(world.parse_caption(c)["motion"] is not None for c in always)


def test_resolution_independence_32_vs_128():
    rng = np.random.default_rng(11)
    mask_errors = []
    for _ in range(12):
        params = _static(world.sample_params(rng))
        small, large = world.render(params, 32), world.render(params, 128)
        np.testing.assert_allclose(small.centres * 4, large.centres, atol=1e-3)
        np.testing.assert_allclose(small.sizes * 4, large.sizes, rtol=1e-5)
        mask_errors.append(np.linalg.norm(world.centre_from_mask(small.masks) * 4
                                          - world.centre_from_mask(large.masks), axis=1))
    assert np.median(np.concatenate(mask_errors)) < 0.5     # pixels at 128


@pytest.mark.parametrize("motion", world.MOTIONS)
def test_every_motion_moves(motion):
    rng = np.random.default_rng(12)
    for _ in range(10):
        clip = world.render(world.sample_params(rng, motion=motion), 32)
        steps = np.linalg.norm(np.diff(clip.centres, axis=0), axis=1)            # px per frame
        observed = np.linalg.norm(np.diff(world.centre_from_mask(clip.masks), axis=0), axis=1)
        assert steps.mean() > 0.2 and observed.mean() > 0.2, motion
        assert steps.max() < 3.0, motion                                          # smooth
        if motion == "pause":
            assert steps.min() < 1e-6


def test_bounce_reflects_off_the_walls():
    params = world.sample_params(np.random.default_rng(13), motion="bounce")
    t = np.linspace(0, 1, 1001)
    centre = world.trajectory(params, t)
    margin = params.max_size
    assert (centre >= margin - 1e-9).all() and (centre <= 1 - margin + 1e-9).all()
    velocity = np.diff(centre, axis=0)
    assert (np.sign(velocity[1:]) != np.sign(velocity[:-1])).any()             # at least one bounce
    np.testing.assert_allclose(np.abs(velocity).sum(axis=0), np.abs([params.dx, params.dy]), rtol=0.01)


def test_size_change_and_rotation_ground_truth():
    params = world.ClipParams("square", "green", "white", "linear", 0.5, 0.5, size0=0.15, size_ratio=1.5,
                              angle0=0.1, spin=1.0)
    clip = world.render(params, 64, 5)
    np.testing.assert_allclose(clip.sizes, 0.15 * 64 * 1.5 ** np.linspace(0, 1, 5), rtol=1e-5)
    np.testing.assert_allclose(clip.angles, 0.1 + np.linspace(0, 1, 5), rtol=1e-5)
    areas = clip.masks.sum(axis=(1, 2))
    assert (np.diff(areas) > 0).all()
    np.testing.assert_allclose(areas, 2 * clip.sizes ** 2, rtol=0.1)      # a square of circumradius r: area 2 r^2


def test_rotation_is_rendered():
    spin = math.pi / 2                                                        # 18 degrees per frame at 6 frames
    star = world.ClipParams("star", "red", "black", "linear", 0.5, 0.5, size0=0.3, spin=spin)
    masks = world.render(star, 64, 6).masks
    assert all(_iou(a, b) < 0.95 for a, b in zip(masks[:-1], masks[1:]))
    ahead = world.ClipParams("star", "red", "black", "linear", 0.5, 0.5, size0=0.3, angle0=spin / 5)
    assert _iou(world.render(ahead, 64, 1).masks[0], masks[1]) > 0.97        # frame 1 is the star turned by 18 deg
    circle = dataclasses.replace(star, shape="circle")
    circle_masks = world.render(circle, 64, 6).masks
    assert (circle_masks == circle_masks[0]).all()


def test_shapes_are_distinguishable():
    masks = {shape: world.render(world.ClipParams(shape, "red", "black", "linear", 0.5, 0.5, size0=0.3), 64, 1)
             .masks[0] for shape in world.SHAPES}
    for a, b in itertools.combinations(world.SHAPES, 2):
        assert _iou(masks[a], masks[b]) < 0.9, (a, b, _iou(masks[a], masks[b]))


def test_render_speed():
    rng = np.random.default_rng(14)
    start = time.perf_counter()
    for _ in range(1000):
        world.sample_clip(rng, size=32, frames=16)
    elapsed = time.perf_counter() - start
    print(f"world: {1000 / elapsed:.0f} clips/s at 32x32x16")
    assert elapsed < 10.0


# ------------------------------------------------------------------------------------ textured backgrounds (v2)

def test_texture_draws_leave_version_1_clips_unchanged():
    rng_a, rng_b = np.random.default_rng(21), np.random.default_rng(21)
    plain = [world.sample_params(rng_a) for _ in range(20)]
    assert all(p.texture == "plain" for p in plain)
    maybe = [world.sample_params(rng_b, texture_prob=1.0) for _ in range(1)]
    first = dataclasses.replace(maybe[0], texture="plain", texture_amplitude=0.0, texture_angle=0.0, texture_seed=0)
    assert first == plain[0]                       # texture draws come after every version-1 draw


def test_texture_share_and_kinds():
    rng = np.random.default_rng(3)
    params = [world.sample_params(rng, texture_prob=0.5) for _ in range(600)]
    kinds = [p.texture for p in params]
    assert 0.42 < kinds.count("plain") / len(kinds) < 0.58
    assert kinds.count("gradient") > 100 and kinds.count("noise") > 100


@pytest.mark.parametrize("texture", ["gradient", "noise"])
def test_textured_background_is_static_bounded_and_resolution_independent(texture):
    base = world.sample_params(np.random.default_rng(5), background="white", motion="linear")
    params = dataclasses.replace(base, texture=texture, texture_amplitude=14.0, texture_angle=0.7, texture_seed=11)
    clip = world.render(params, size=64, frames=6)
    bg = np.array(world.BACKGROUNDS["white"], np.float64)
    away = ~clip.masks.any(axis=0) & ~_dilated(clip.masks.any(axis=0))      # never touched by the object
    pixels = clip.frames[:, away].astype(np.float64)                          # (F, N, 3)
    assert (pixels == pixels[:1]).all()                                       # the same in every frame
    distance = bg - pixels                                                    # towards grey: white only darkens
    assert distance.min() >= 0 and 12.0 <= distance.max() <= 14.0 + 0.5      # pattern fills its amplitude
    small = world.background_image(params, 32)
    large = world.background_image(params, 64)
    down = cv2.resize(large, (32, 32), interpolation=cv2.INTER_AREA)
    assert np.abs(down - small).max() < 1.5                                   # same picture at both sizes
    plain = world.background_image(dataclasses.replace(params, texture="plain"), 32)
    assert (plain == bg).all()


def test_textured_frame_blends_the_object_over_the_pattern():
    base = world.sample_params(np.random.default_rng(6), colour="red", background="gray")
    params = dataclasses.replace(base, texture="gradient", texture_amplitude=10.0)
    clip = world.render(params, size=48, frames=3)
    inside = clip.masks & _eroded(clip.masks)
    np.testing.assert_array_equal(clip.frames[inside], np.array(world.COLOURS["red"], np.uint8)[None].repeat(
        inside.sum(), 0))


def test_texture_amplitude_is_checked():
    with pytest.raises(ValueError, match="texture_amplitude"):
        dataclasses.replace(world.sample_params(np.random.default_rng(0)), texture_amplitude=300.0)
    with pytest.raises(ValueError, match="texture"):
        dataclasses.replace(world.sample_params(np.random.default_rng(0)), texture="plaid")


def _dilated(mask: np.ndarray) -> np.ndarray:
    return cv2.dilate(mask.astype(np.uint8), np.ones((7, 7), np.uint8)).astype(bool)


def _eroded(mask: np.ndarray) -> np.ndarray:
    return np.stack([cv2.erode(m.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool) for m in mask])


# ------------------------------------------------------------------------------------------------ light (v3)

def test_light_takes_no_draw_and_lights_the_unlit_clip():
    unlit = world.make_dataset(4, seed=3, size=32, frames=4, texture_prob=0.5)
    lit = world.make_dataset(4, seed=3, size=32, frames=4, texture_prob=0.5, light=0.4)
    assert lit["captions"] == unlit["captions"]
    assert [dataclasses.replace(p, light=0.0) for p in lit["params"]] == unlit["params"]
    np.testing.assert_array_equal(lit["frames"], world.apply_light(unlit["frames"], 0.4))
    assert not np.array_equal(lit["frames"], unlit["frames"])


def test_light_shows_both_coordinates_and_is_resolution_independent():
    gain = world.light_gain(64, 0.4)
    brightness = gain.mean(axis=-1)
    assert (np.diff(brightness[:, 0]) < 0).all()                     # brighter at the top
    np.testing.assert_allclose(np.diff(brightness[0]), 0, atol=1e-12)  # the tint keeps the mean
    warm = gain[..., 0] - gain[..., 2]
    assert (np.diff(warm[0]) < 0).all()                               # warmer on the left
    np.testing.assert_allclose(np.diff(warm[:, 0]), 0, atol=1e-12)
    assert abs(brightness[0, 0] - 1.2) < 0.01 and abs(brightness[-1, 0] - 0.8) < 0.01
    small = world.light_gain(16, 0.4)
    np.testing.assert_allclose(cv2.resize(gain, (16, 16), interpolation=cv2.INTER_AREA), small, atol=1e-9)


def test_lit_object_looks_different_in_each_part_of_the_frame():
    base = world.sample_params(np.random.default_rng(2), colour="red", background="gray")
    looks = []
    for x0, y0 in ((0.25, 0.25), (0.75, 0.25), (0.25, 0.75)):
        params = dataclasses.replace(base, motion="linear", x0=x0, y0=y0, dx=0.0, dy=0.0, spin=0.0, size_ratio=1.0,
                                     light=0.4)
        clip = world.render(params, size=32, frames=1)
        inside = clip.masks[0] & _eroded(clip.masks)[0]
        looks.append(clip.frames[0][inside].mean(axis=0))
    assert np.abs(looks[0] - looks[1]).max() > 20 and np.abs(looks[0] - looks[2]).max() > 20


def test_light_strength_is_checked():
    with pytest.raises(ValueError, match="light"):
        dataclasses.replace(world.sample_params(np.random.default_rng(0)), light=1.5)


def test_position_phrase_names_the_third_the_object_starts_in():
    assert world.describe_position(0.1, 0.1) == "top left" and world.describe_position(0.5, 0.5) == "middle"
    assert world.describe_position(0.9, 0.5) == "right" and world.describe_position(0.5, 0.99) == "bottom"
    assert world.describe_position(1.0, 0.0) == "top right"
    for seed in range(10):
        clip = world.sample_clip(np.random.default_rng(seed), size=48, position_phrase=True)
        x, y = clip.centres[0] / 48
        assert f" from {world.describe_position(x, y)} on a " in clip.caption
        words = clip.caption.split()
        assert set(words) <= set(world.vocabulary()) and len(words) <= 14      # fits 16 tokens with bos/eos
        assert world.parse_caption(clip.caption)["shape"] == clip.params.shape


def test_position_captions_keep_the_clips_and_the_other_words():
    plain = world.make_dataset(40, seed=3, size=16, frames=4)
    placed = world.make_dataset(40, seed=3, size=16, frames=4, position_prob=0.5)
    np.testing.assert_array_equal(plain["frames"], placed["frames"])
    with_phrase = [" from " in c for c in placed["captions"]]
    assert 8 <= sum(with_phrase) <= 32
    for a, b, has in zip(plain["captions"], placed["captions"], with_phrase):
        assert (a == b) != has and (a == " ".join(w for w in b.split() if w not in {"from", "top", "bottom",
                                                                               "middle", "left", "right"})
                                    or "left" in a or "right" in a)
