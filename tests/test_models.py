"""Model loading and the adapter: the tiny checkpoint through the real path, and ZeroScope's UNet on the meta device."""

import shutil

import numpy as np
import pytest
import torch

from motiontransfer.config import DEFAULT_LAYERS
from motiontransfer.features import FeatureHooks
from motiontransfer.models import DEFAULT_FRAMES, ModelDefaults, load_model, model_identity
from motiontransfer.tools import zeroscope

from conftest import build_tiny_model, moving_square


@pytest.fixture(scope="module")
def model(tiny_model):
    return load_model(str(tiny_model), device="cpu")


# ------------------------------------------------------------------------------------------------- loading

def test_components_are_frozen_in_eval_mode_fp32_on_cpu(model):
    assert model.device == torch.device("cpu") and model.dtype == torch.float32
    for component in (model.unet, model.vae, model.text_encoder):
        assert not component.training
        assert all(not m.training for m in component.modules())
        params = list(component.parameters())
        assert params and not any(p.requires_grad for p in params)
        assert {p.dtype for p in params} == {torch.float32}
        assert {p.device.type for p in params} == {"cpu"}
    assert model.scheduler_config["num_train_timesteps"] == 1000


def test_identity_is_stable_across_loads_and_copies(tiny_model, model, tmp_path):
    again = load_model(str(tiny_model), device="cpu")
    assert again.identity == model.identity
    copy = shutil.copytree(tiny_model, tmp_path / "elsewhere" / tiny_model.name)
    assert load_model(str(copy), device="cpu").identity == model.identity
    # the hash part names the weights alone, not the folder they sit in
    renamed = shutil.copytree(tiny_model, tmp_path / "renamed")
    assert model_identity(renamed) == model_identity(tiny_model) == model.identity


def test_identity_differs_for_other_weights(model, tmp_path):
    other = build_tiny_model(tmp_path / "model", seed=1)
    assert load_model(str(other), device="cpu").identity != model.identity


def test_defaults_come_from_motiontransfer_json(model):
    assert model.defaults == ModelDefaults(width=32, height=32, frames=4, fps=8.0, negative_prompt="")


def test_defaults_without_motiontransfer_json_come_from_the_configs(tmp_path):
    # UNet sample_size 4 latent pixels x VAE factor 4 = 16 pixels; frames: ZeroScope's 24
    path = build_tiny_model(tmp_path / "plain", size=16, with_defaults=False)
    loaded = load_model(str(path), device="cpu")
    assert loaded.unet.config.sample_size == 4 and loaded.vae_scale == 4
    assert loaded.defaults == ModelDefaults(width=16, height=16, frames=DEFAULT_FRAMES)
    assert DEFAULT_FRAMES == 24


# ------------------------------------------------------------------------------------------- pixels, latents

def test_encode_and_decode_shapes(model):
    frames = moving_square(3, 32)
    latents = model.encode_frames(frames)
    assert latents.shape == (1, 4, 3, 8, 8) and latents.dtype == torch.float32
    # contiguous, like latents read back from the inversion cache: kernels round differently on other strides
    assert latents.is_contiguous()
    assert torch.isfinite(latents).all()
    decoded = model.decode_latents(latents)
    assert decoded.shape == (3, 32, 32, 3) and decoded.dtype == np.uint8


def test_encoding_is_per_frame_and_deterministic(model):
    frames = moving_square(3, 32)
    latents = model.encode_frames(frames)
    assert torch.equal(latents, model.encode_frames(frames))
    # frame f's latent depends on frame f alone, and lands at index f of the frame axis
    assert torch.allclose(model.encode_frames(frames[1:2])[:, :, 0], latents[:, :, 1], atol=1e-5)
    assert not torch.allclose(latents[:, :, 0], latents[:, :, 2])


def test_posterior_sample_repeats_under_its_generator_and_changes_with_the_seed(model):
    frames = moving_square(3, 32)
    mean = model.encode_frames(frames)

    def sample(seed):
        return model.encode_frames(frames, generator=torch.Generator().manual_seed(seed))

    a, b = sample(0), sample(1)
    assert torch.equal(a, sample(0)) and not torch.equal(a, b)
    assert not torch.allclose(a, mean)
    # a sample is mean + std * eps, eps ~ N(0, 1) in the layout (F, C, h, w)
    x = torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 127.5 - 1
    posterior = model.vae.encode(x).latent_dist
    eps = torch.randn((3, 4, 8, 8), generator=torch.Generator().manual_seed(0))
    expected = (posterior.mean + posterior.std * eps) * model.scaling_factor
    torch.testing.assert_close(a, expected.permute(1, 0, 2, 3).unsqueeze(0), atol=1e-5, rtol=1e-5)
    try:
        model.vae_slicing = True                                  # one draw for all frames: the same sample
        torch.testing.assert_close(sample(0), a, atol=1e-5, rtol=1e-5)
    finally:
        model.vae_slicing = False


def test_vae_slicing_gives_the_same_result(model):
    frames = moving_square(3, 32)
    try:
        model.vae_slicing = False
        whole = model.encode_frames(frames)
        whole_pixels = model.decode_latents(whole)
        model.vae_slicing = True
        sliced = model.encode_frames(frames)
        sliced_pixels = model.decode_latents(whole)
    finally:
        model.vae_slicing = False
    assert torch.allclose(whole, sliced, atol=1e-5)
    assert np.abs(whole_pixels.astype(int) - sliced_pixels).max() <= 1


def test_per_channel_latent_statistics_are_applied_and_undone(model):
    # diffusers' convention for a VAE config with latents_mean / latents_std: (z - mean) * s / std
    frames = moving_square(3, 32)
    plain = model.encode_frames(frames)
    plain_pixels = model.decode_latents(plain)
    mean, std = [0.5, -1.0, 0.0, 2.0], [2.0, 0.5, 1.0, 4.0]
    config = model.vae.config
    try:
        model.vae.register_to_config(latents_mean=mean, latents_std=std)
        normalised = model.encode_frames(frames)
        pixels = model.decode_latents(normalised)
    finally:
        model.vae.register_to_config(latents_mean=config.get("latents_mean"), latents_std=config.get("latents_std"))
    s = model.scaling_factor
    view = (1, 4, 1, 1, 1)
    expected = (plain / s - torch.tensor(mean).view(view)) * s / torch.tensor(std).view(view)
    assert torch.allclose(normalised, expected, atol=1e-5)
    assert np.abs(pixels.astype(int) - plain_pixels).max() <= 1        # decoding undoes it
    assert model._channel_stats(plain) is None                         # and the config is as it was


# ------------------------------------------------------------------------------------------------- predict

def _inputs(model):
    x = torch.randn(1, 4, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    cond, uncond = model.encode_prompts(["a green star", ""])[:, None]
    return x, cond, uncond


def test_prompt_embeddings_shape(model):
    embeddings = model.encode_prompts(["a red star", "a blue circle on a white background"])
    assert embeddings.shape == (2, model.tokenizer.model_max_length, model.text_encoder.config.hidden_size)
    assert not torch.allclose(embeddings[0], embeddings[1])


def test_predict_at_scale_1_is_the_conditional_output(model):
    x, cond, uncond = _inputs(model)
    direct = model.unet(x, 501, encoder_hidden_states=cond).sample
    assert direct.shape == x.shape
    assert torch.allclose(model.predict(x, 501, cond), direct, atol=1e-6)
    assert torch.allclose(model.predict(x, 501, cond, uncond, scale=1.0), direct, atol=1e-6)


@pytest.mark.parametrize("scale", [0.0, 7.5])
def test_predict_with_cfg_is_uncond_plus_scaled_difference(model, scale):
    x, cond, uncond = _inputs(model)
    out_cond = model.predict(x, 501, cond)
    out_uncond = model.predict(x, 501, uncond)
    assert (out_cond - out_uncond).abs().max() > 1e-4, "the prompts must make a difference for this test"
    expected = out_uncond + scale * (out_cond - out_uncond)
    assert torch.allclose(model.predict(x, 501, cond, uncond, scale=scale), expected, atol=1e-5, rtol=1e-4)


def test_features_are_split_into_batch_and_frames(model):
    x, cond, _ = _inputs(model)
    with FeatureHooks(model.unet, DEFAULT_LAYERS) as hooks:
        features = model.features(hooks, x, 501, cond)
    assert list(features) == list(DEFAULT_LAYERS)
    for name, f in features.items():
        assert f.shape[:3] == (1, 3, 16), name        # (B, F, D, h, w); up_blocks.1 of the tiny UNet has 16 channels
    # latent 8x8 -> down to 2x2; up_blocks.1 works at 4x4 and upsamples to 8x8
    assert features["up_blocks.1.temp_convs.1"].shape[-2:] == (4, 4)
    assert features["up_blocks.1.upsamplers.0"].shape[-2:] == (8, 8)


# -------------------------------------------------------------------------------------- ZeroScope architecture

@pytest.fixture(scope="module")
def zeroscope_unet():
    from diffusers import UNet3DConditionModel

    with torch.device("meta"):
        return UNet3DConditionModel(**zeroscope.UNET_CONFIG)


def test_zeroscope_has_the_hooked_layers(zeroscope_unet):
    from diffusers.models.unets.unet_3d_blocks import CrossAttnUpBlock3D

    names = dict(zeroscope_unet.named_modules())
    assert all(name in names for name in DEFAULT_LAYERS)
    block = zeroscope_unet.up_blocks[1]
    assert isinstance(block, CrossAttnUpBlock3D)
    assert block.resnets[1].conv2.out_channels == 1280 and block.upsamplers[0].channels == 1280
    # ~1.4 G parameters, as the released checkpoint: the config is ZeroScope's and not a small look-alike
    assert 1.3e9 < sum(p.numel() for p in zeroscope_unet.parameters()) < 1.5e9


def test_zeroscope_truncated_pass_stops_after_up_blocks_1(zeroscope_unet):
    ran = {"up_blocks.2": 0, "conv_out": 0, "up_blocks.1": 0}
    handles = [zeroscope_unet.get_submodule(name).register_forward_hook(
        lambda *args, name=name: ran.__setitem__(name, ran[name] + 1)) for name in ran]
    try:
        x = torch.empty(1, 4, 24, 40, 72, device="meta")                  # (B, C, F, h, w): 576x320 pixels
        text = torch.empty(1, 77, 1024, device="meta")
        with torch.no_grad(), FeatureHooks(zeroscope_unet, DEFAULT_LAYERS) as hooks:
            features = hooks.run(zeroscope_unet, x, 981, encoder_hidden_states=text)
    finally:
        for handle in handles:
            handle.remove()
    assert ran == {"up_blocks.2": 0, "conv_out": 0, "up_blocks.1": 0}    # the pass stops inside up_blocks.1
    assert {name: tuple(f.shape) for name, f in features.items()} == {
        "up_blocks.1.resnets.1.conv2": (24, 1280, 10, 18),               # (B*F, D, h, w) at 1/32 of the pixels
        "up_blocks.1.temp_convs.1": (24, 1280, 10, 18),
        "up_blocks.1.upsamplers.0": (24, 1280, 20, 36),
    }


# ------------------------------------------------------------------------------------------- vocabulary warnings

def test_unknown_words_of_a_closed_vocabulary():
    from motiontransfer.backbones.base import unknown_words
    vocab = ("a", "red", "star", "on", "black", "background")
    assert unknown_words("a dolphin swimming, a Dolphin!", vocab) == ["dolphin", "swimming"]
    assert unknown_words("A red star on a black background.", vocab) == []
    assert unknown_words("anything at all", None) == []


def test_shipped_model_warns_once_about_words_it_does_not_know(caplog):
    from motiontransfer.models import load_model
    model = load_model(None, device="cpu")
    assert "star" in model.defaults.vocabulary and "dolphin" not in model.defaults.vocabulary
    with caplog.at_level("WARNING", logger="motiontransfer.backbones"):
        model.encode_prompts(["a dolphin swimming", "a red star on a black background"])
        model.encode_prompts(["a dolphin swimming"])
    warnings = [r.getMessage() for r in caplog.records if "does not know" in r.getMessage()]
    assert len(warnings) == 1
    assert "'dolphin', 'swimming'" in warnings[0] and "star" in warnings[0].split("the words it knows:")[1]


def test_the_reference_negative_prompt_is_not_warned_about(caplog):
    """--preset reference adds its negative prompt whatever the model: the user did not write those words."""
    from motiontransfer.config import REFERENCE_NEGATIVE_PROMPT
    from motiontransfer.backbones.base import unknown_words
    from motiontransfer.models import load_model
    model = load_model(None, device="cpu")
    assert unknown_words(REFERENCE_NEGATIVE_PROMPT, model.defaults.vocabulary)     # the words are unknown...
    with caplog.at_level("WARNING", logger="motiontransfer.backbones"):
        model.encode_prompts(["a red star", REFERENCE_NEGATIVE_PROMPT])
    assert not [r for r in caplog.records if "does not know" in r.getMessage()]    # ...and not warned about


def test_a_model_json_that_is_a_symlink_to_a_device_is_refused_unread(tiny_model, tmp_path):
    from motiontransfer.errors import ModelError

    other = tmp_path / "model"
    shutil.copytree(tiny_model, other)
    (other / "motiontransfer.json").unlink()
    (other / "motiontransfer.json").symlink_to("/dev/zero")
    with pytest.raises(ModelError, match="not a regular file"):
        load_model(str(other), device="cpu")


@pytest.mark.parametrize("component, change, message", [
    ("scheduler/scheduler_config.json", {"num_train_timesteps": 10 ** 10}, "num_train_timesteps"),
    ("scheduler/scheduler_config.json", {"num_train_timesteps": 0}, "num_train_timesteps"),
    ("scheduler/scheduler_config.json", {"beta_schedule": "nope"}, "beta_schedule = nope is not one of"),
    ("scheduler/scheduler_config.json", {"prediction_type": ["epsilon"]}, "prediction_type"),
    ("tokenizer/tokenizer_config.json", {"model_max_length": 1e9}, "model_max_length"),
    ("tokenizer/tokenizer_config.json", {"model_max_length": 1000}, "model_max_length"),
    # what only the loaded components refuse
    ("tokenizer/tokenizer_config.json", {"pad_token": "no"}, "tokens but the text encoder only"),
    ("scheduler/scheduler_config.json", {"timestep_spacing": "3"}, "cannot make a schedule"),
    ("scheduler/scheduler_config.json", {"steps_offset": "yes"}, "cannot make a schedule"),
])
def test_damaged_model_configs_are_one_line(tiny_model, tmp_path, component, change, message):
    import json

    from motiontransfer.errors import ModelError

    other = tmp_path / "model"
    shutil.copytree(tiny_model, other)
    path = other / component
    path.write_text(json.dumps(json.loads(path.read_text()) | change))
    with pytest.raises(ModelError, match=message):
        load_model(str(other), device="cpu")


@pytest.mark.parametrize("victim", ["tokenizer/tokenizer_config.json", "scheduler/scheduler_config.json",
                                    "unet/config.json"])
def test_a_component_file_that_is_a_device_is_refused_before_anything_reads_it(tiny_model, tmp_path, victim):
    from motiontransfer.errors import ModelError

    other = tmp_path / "model"
    shutil.copytree(tiny_model, other)
    (other / victim).unlink()
    (other / victim).symlink_to("/dev/zero")
    with pytest.raises(ModelError, match="not a regular file"):
        load_model(str(other), device="cpu")


def test_a_damaged_tokenizer_file_is_one_line(tiny_model, tmp_path):
    import json

    from motiontransfer.errors import ModelError

    other = tmp_path / "model"
    shutil.copytree(tiny_model, other)
    (other / "tokenizer" / "tokenizer.json").write_text(json.dumps({"model": {}}))
    (other / "tokenizer" / "vocab.json").unlink()
    with pytest.raises(ModelError, match="cannot load the model"):
        load_model(str(other), device="cpu")


def test_a_missing_tokenizer_config_or_a_strange_pipeline_name_is_one_line(tiny_model, tmp_path):
    import json

    from motiontransfer.errors import ModelError

    other = tmp_path / "model"
    shutil.copytree(tiny_model, other)
    (other / "tokenizer" / "tokenizer_config.json").unlink()
    with pytest.raises(ModelError, match="pads prompts to"):
        load_model(str(other), device="cpu")
    (other / "model_index.json").write_text(json.dumps({"_class_name": {}}))
    with pytest.raises(ModelError, match="does not run|pads prompts"):
        load_model(str(other), device="cpu")
