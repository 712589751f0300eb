"""Configuration: presets, YAML files, flags over files, validation in one place, a lossless YAML round trip."""

import dataclasses

import pytest
import yaml

from motiontransfer.config import (DEFAULT_LAYERS, METHOD_OPTIONS, PRESETS, REFERENCE_NEGATIVE_PROMPT,
                                  TransferConfig, explicit_keys, read_yaml, resolve)
from motiontransfer.errors import ConfigError


def write_yaml(path, data) -> str:
    path.write_text(yaml.safe_dump(data))
    return str(path)


# ------------------------------------------------------------------------------------------------ presets

def test_default_preset_inverts_on_the_sampling_schedule():
    config, run = resolve()
    assert config == TransferConfig()
    assert config.inversion_steps is None and config.restart is False
    assert config.layers is None and (config.steps, config.reuse_every) == (25, 3)      # None: the model's own
    assert run == {}


def test_reference_preset_is_the_papers_recipe():
    config, _ = resolve("reference")
    assert config.inversion_steps == 999 and config.restart is True
    assert (config.steps, config.iterations, config.reuse_every, config.early_stop) == (50, 10, 1, 0.0)
    assert (config.steps, config.guidance_window, config.iterations) == (50, (0.0, 0.4), 10)
    assert config.learning_rate == (0.007, 0.004) and config.loss == "pairwise_cosine" and config.init == "lf"
    assert config.lf_filter == "reference" and config.vae_encode == "sample" and config.quantize == "truncate"
    assert config.negative_prompt == REFERENCE_NEGATIVE_PROMPT == \
        "bad quality, distortions, unrealistic, distorted image, watermark, signature"


def test_default_preset_keeps_our_filter_encoding_and_the_models_negative_prompt():
    config, _ = resolve()
    assert (config.lf_filter, config.vae_encode, config.negative_prompt, config.quantize) == \
        ("lowpass", "mean", None, "round")


def test_previous_preset_spells_out_the_default_recipe_and_yields_to_the_model_as_the_defaults_do():
    guidance = {"steps", "inversion_steps", "restart", "guidance_window", "iterations", "learning_rate", "layers",
                "loss", "init", "lf_factor", "early_stop", "reuse_every"}
    assert guidance <= set(PRESETS["previous"]) <= set(METHOD_OPTIONS) | {"negative_prompt"}
    # The default recipe before issue 14's study: it differs from today's in the step count and the reuse only
    config, _ = resolve("previous")
    assert config.replace(steps=25, reuse_every=3) == TransferConfig()
    assert (config.steps, config.inversion_steps, config.restart, config.guidance_window, config.iterations,
            config.learning_rate, config.layers, config.loss, config.init, config.lf_factor, config.early_stop,
            config.reuse_every) == (50, None, False, (0.0, 0.4), 10, (0.007, 0.004), None,
                                    "pairwise_cosine", "lf", 4, 0.0, 1)
    # a model's recommendations (e.g. the shipped model's init: inverted) apply over it as over the defaults; the
    # reference preset's values are explicit and win
    assert explicit_keys("previous") == explicit_keys("default") == set()
    assert explicit_keys("previous", overrides={"init": "lf"}) == {"init"}
    assert {"init", "lf_factor", "steps"} <= explicit_keys("reference")


def test_unknown_preset():
    with pytest.raises(ConfigError, match="unknown preset 'fastest'"):
        resolve("fastest")


def test_every_preset_builds_a_valid_config():
    for name in PRESETS:
        assert isinstance(resolve(name)[0], TransferConfig)


# ------------------------------------------------------------------------------------------------ YAML

# one non-default value for every field, as YAML would spell it (lists for tuples)
EVERY_FIELD = {
    "model": "some/folder", "frames": 8, "stride": 2, "start": 3, "region": [4, 2, 40, 30], "resize": "pad", "width": 64, "height": 48,
    "source_prompt": "a red square", "negative_prompt": "blurry", "guidance_scale": 7.5, "steps": 20,
    "inversion_steps": 40, "inversion_solver": "midpoint", "restart": True, "guidance_window": [0.1, 0.5],
    "iterations": 3, "early_stop": 0.05,
    "reuse_every": 2,
    "learning_rate": [0.01, 0.002], "layers": ["up_blocks.1.temp_convs.1", "up_blocks.2.resnets.0"],
    "layer_weights": [1.0, 0.5], "loss": "smm", "init": "random", "lf_factor": 2, "lf_filter": "reference",
    "vae_encode": "sample", "quantize": "truncate", "sdedit_strength": 0.9, "seed": 7, "device": "cpu",
    "dtype": "bf16", "allow_unsafe_weights": True, "cache_dir": "/tmp/somewhere", "use_cache": False,
    "vae_slicing": True, "activations": "checkpoint", "cpu_offload": True,
}


def test_yaml_sets_every_field(tmp_path):
    assert set(EVERY_FIELD) == {f.name for f in dataclasses.fields(TransferConfig)}, "update EVERY_FIELD"
    config, run = resolve(config_file=write_yaml(tmp_path / "c.yaml", EVERY_FIELD))
    for name, value in EVERY_FIELD.items():
        expected = tuple(value) if isinstance(value, list) else value
        assert getattr(config, name) == expected, name
        assert getattr(config, name) != getattr(TransferConfig(), name), f"{name} is not a non-default value"
    assert isinstance(config.layers, tuple) and isinstance(config.guidance_window, tuple)
    assert run == {}


def test_yaml_may_set_run_options(tmp_path):
    config, run = resolve(config_file=write_yaml(tmp_path / "c.yaml", {"output_dir": "out/x", "overwrite": True,
                                                                        "steps": 10}))
    assert run == {"output_dir": "out/x", "overwrite": True}
    assert config.steps == 10


def test_a_single_layer_may_be_a_string(tmp_path):
    config, _ = resolve(config_file=write_yaml(tmp_path / "c.yaml", {"layers": "up_blocks.1.temp_convs.1"}))
    assert config.layers == ("up_blocks.1.temp_convs.1",)


def test_flags_override_the_file_and_none_flags_do_not(tmp_path):
    path = write_yaml(tmp_path / "c.yaml", {"steps": 20, "seed": 3, "loss": "smm"})
    config, _ = resolve(config_file=path, overrides={"steps": 10, "seed": None, "learning_rate": (0.02, 0.01)})
    assert config.steps == 10                       # the flag wins
    assert config.seed == 3                         # a flag left at None does not erase the file's value
    assert config.loss == "smm"                     # the file wins over the default
    assert config.learning_rate == (0.02, 0.01)


def test_file_overrides_the_preset_and_flags_override_both(tmp_path):
    path = write_yaml(tmp_path / "c.yaml", {"restart": False, "steps": 30})
    config, _ = resolve("reference", path)
    assert config.restart is False and config.steps == 30 and config.inversion_steps == 999
    config, _ = resolve("reference", path, {"restart": True})
    assert config.restart is True


def test_unknown_key_names_it(tmp_path):
    path = write_yaml(tmp_path / "c.yaml", {"steps": 10, "guidance_sclae": 7.5, "layerz": ["a"]})
    with pytest.raises(ConfigError, match="guidance_sclae, layerz"):
        resolve(config_file=path)
    with pytest.raises(ConfigError, match="guidance_sclae"):
        read_yaml(path)


def test_unknown_override_names_it():
    with pytest.raises(ConfigError, match="stepz"):
        resolve(overrides={"stepz": 3})


def test_preset_key_in_the_file(tmp_path):
    config, run = resolve(config_file=write_yaml(tmp_path / "c.yaml", {"preset": "reference", "steps": 100}))
    assert config.inversion_steps == 999 and config.restart is True and config.steps == 100
    assert "preset" not in run
    # an explicit preset argument (the --preset flag) wins over the file's
    config, _ = resolve("default", tmp_path / "c.yaml")
    assert config.inversion_steps is None and config.restart is False


@pytest.mark.parametrize("text, message", [
    ("steps: [1, 2\n", "not valid YAML"),
    ("- steps\n- 10\n", "mapping"),
])
def test_malformed_files(tmp_path, text, message):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        resolve(config_file=path)


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        resolve(config_file=tmp_path / "nope.yaml")


def test_empty_file_is_the_defaults(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("")
    assert resolve(config_file=path)[0] == TransferConfig()


# --------------------------------------------------------------------------------------------- validation

@pytest.mark.parametrize("changes, message", [
    ({"guidance_window": (0.5, 0.2)}, "guidance window"),
    ({"guidance_window": (0.0, 1.5)}, "guidance window"),
    ({"learning_rate": (-0.01, 0.004)}, "learning_rate"),
    ({"learning_rate": (0.01,)}, "learning_rate"),
    ({"layers": DEFAULT_LAYERS, "layer_weights": (1.0, 2.0)}, "layer_weights has 2 entries for 3 layers"),
    ({"inversion_steps": 20}, r"--inversion-steps \(20\) must be at least --steps \(25\)"),
    ({"inversion_steps": 1000}, "at most 999"),
    ({"steps": 0}, "--steps"),
    ({"frames": 1}, "--frames"),
    ({"width": 30}, "multiple of 8"),
    ({"stride": 0}, "--stride"),
    ({"start": -1}, "--start"),
    ({"layers": ()}, "at least one layer"),
    ({"loss": "l1"}, "--loss"),
    ({"init": "zeros"}, "--init"),
    ({"resize": "fit"}, "--resize"),
    ({"dtype": "fp8"}, "--dtype"),
    ({"guidance_scale": -1.0}, "--guidance-scale"),
    ({"iterations": -1}, "--iterations"),
    ({"lf_factor": 0}, "lf_factor"),
    ({"lf_filter": "bicubic"}, "--lf-filter"),
    ({"vae_encode": "mode"}, "--vae-encode"),
    ({"quantize": "floor"}, "--quantize"),
    ({"early_stop": -0.1}, "--early-stop"),
    ({"early_stop": 1.0}, "--early-stop"),
    ({"early_stop": float("nan")}, "--early-stop"),
    ({"reuse_every": 0}, "--reuse-every"),
])
def test_invalid_values_are_config_errors(changes, message):
    with pytest.raises(ConfigError, match=message):
        TransferConfig(**changes)
    with pytest.raises(ConfigError, match=message):          # the same check on every path in
        resolve(overrides=changes)
    with pytest.raises(ConfigError, match=message):
        TransferConfig().replace(**changes)


def test_valid_edge_values_pass():
    TransferConfig(guidance_window=(0.3, 0.3), inversion_steps=50, layer_weights=(1, 1, 1), iterations=0,
                   frames=2, width=8, early_stop=0.999, reuse_every=1000)


@pytest.mark.parametrize("key, value", [
    ("steps", "many"), ("steps", 4.5), ("frames", 8.0), ("seed", "0"), ("restart", "no"), ("use_cache", 1),
    ("guidance_scale", "high"), ("guidance_scale", True), ("layers", [1, 2]), ("learning_rate", 0.01),
    ("guidance_window", [0.1, 0.2, 0.3]), ("source_prompt", 3), ("model", ["a", "b"]),
    ("early_stop", "soon"), ("early_stop", True), ("reuse_every", 1.5), ("reuse_every", True),
])
def test_wrong_type_in_a_file_is_a_config_error_naming_the_key(tmp_path, key, value):
    with pytest.raises(ConfigError, match=key.replace("_", "[_ -]")):
        resolve(config_file=write_yaml(tmp_path / "c.yaml", {key: value}))


def test_ints_are_accepted_for_floats_and_lists_and_paths_are_normalised(tmp_path):
    config = TransferConfig(guidance_scale=7, learning_rate=[1, 1], layers=["up_blocks.1.temp_convs.1"],
                            model=tmp_path / "model", cache_dir=tmp_path / "cache")
    assert config.learning_rate == (1, 1) and config.layers == ("up_blocks.1.temp_convs.1",)
    assert config.model == str(tmp_path / "model") and config.cache_dir == str(tmp_path / "cache")
    assert yaml.safe_load(yaml.safe_dump(config.to_dict()))["model"] == str(tmp_path / "model")
    assert TransferConfig().replace(layers="up_blocks.1.temp_convs.1").layers == ("up_blocks.1.temp_convs.1",)


def test_config_is_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        TransferConfig().steps = 3


# ------------------------------------------------------------------------------------------------ round trip

@pytest.mark.parametrize("config", [
    TransferConfig(),
    resolve("reference")[0],
    TransferConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in EVERY_FIELD.items()}),
])
def test_to_dict_round_trips_through_yaml(tmp_path, config):
    path = tmp_path / "resolved.yaml"
    path.write_text(yaml.safe_dump(config.to_dict()))
    again, run = resolve(config_file=path)
    assert again == config
    assert run == {}
    assert yaml.safe_load(path.read_text()) == config.to_dict()


@pytest.mark.parametrize("changes, message", [
    ({"guidance_scale": float("inf")}, "--guidance-scale must be a finite number"),
    ({"guidance_scale": 1e308}, "--guidance-scale must be at most 100"),
    ({"learning_rate": (1e30, 0.004)}, "--learning-rate must be at most 10"),
    ({"learning_rate": (float("inf"), float("inf"))}, "--learning-rate must be a finite number"),
    ({"iterations": 10 ** 9}, "--iterations must be at most 1000"),
    ({"seed": 2 ** 64}, "--seed must be in 0.."),
    ({"seed": -1}, "--seed must be in 0.."),
    ({"device": "meta"}, "--device must be auto, cpu, cuda"),
])
def test_numbers_are_finite_and_bounded_whoever_sets_them(changes, message):
    with pytest.raises(ConfigError, match=message):
        TransferConfig(**changes)


@pytest.mark.parametrize("value, message", [("no", "overwrite must be true or false"),
                                            ("false", "overwrite must be true or false")])
def test_overwrite_in_a_config_file_must_be_a_boolean(tmp_path, value, message):
    path = tmp_path / "c.yaml"
    path.write_text(f"overwrite: \"{value}\"\n")
    with pytest.raises(ConfigError, match=message):
        resolve(config_file=str(path))
    path.write_text("output_dir: 123\n")
    with pytest.raises(ConfigError, match="output_dir must be a folder path"):
        resolve(config_file=str(path))


def test_a_config_that_is_a_symlink_to_a_device_is_refused_unread(tmp_path):
    link = tmp_path / "c.yaml"
    link.symlink_to("/dev/zero")
    with pytest.raises(ConfigError, match="not a regular file"):
        resolve(config_file=str(link))
    big = tmp_path / "big.yaml"
    big.write_text("# " + "x" * 2_000_000)
    with pytest.raises(ConfigError, match="over 1000 kB"):
        resolve(config_file=str(big))


def test_a_preset_that_is_not_a_name_is_one_line(tmp_path):
    path = write_yaml(tmp_path / "c.yaml", {"preset": [1, 2]})
    with pytest.raises(ConfigError, match="unknown preset"):
        resolve(config_file=path)
