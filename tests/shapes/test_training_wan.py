"""The Wan family of the shapes model at toy size: its parts, the flow objective, the run, resume and export."""

import json

import numpy as np
import pytest
import torch

from motiontransfer import cli
from motiontransfer.errors import ConfigError
from motiontransfer.shapes import trainer
from motiontransfer.shapes import training as train
from motiontransfer.shapes import training_wan as wan
from motiontransfer.shapes.world import vocabulary

TOY = ["clips=12", "vae_steps=3", "vae_batch=2", "wan_vae_clips=1", "wan_vae_dim=8", "wan_z_dim=4",
       "wan_layers=2", "wan_heads=2", "wan_head_dim=16", "wan_ffn=32", "wan_freq_dim=16", "text_hidden=16",
       "wan_text_ffn=32", "image_steps=2", "image_batch=4", "video_steps=3", "video_batch=2",
       "checkpoint_minutes=0"]


def toy_config(**changes) -> train.TrainConfig:
    cfg = train.train_config(train.Path("/nonexistent"), {"family": "wan"} | dict(kv.split("=") for kv in TOY))
    return train.TrainConfig(**(train.asdict(cfg) | changes))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A toy run through every stage, exported."""
    root = tmp_path_factory.mktemp("wan")
    assert cli.main(["train", "--family", "wan", "--work", str(root / "work"), "--export", str(root / "model"),
                     "--set", *TOY]) == 0
    return root / "work", root / "model"


def test_the_word_tokenizer_gives_one_id_a_word_and_loads_with_auto_tokenizer(tmp_path):
    from transformers import AutoTokenizer

    wan.build_word_tokenizer(tmp_path, max_tokens=16)
    tokenizer = AutoTokenizer.from_pretrained(tmp_path)
    assert tokenizer.model_max_length == 16 and wan.text_length(tokenizer) == 16
    ids = tokenizer("A red circle moving left on a white background").input_ids
    assert len(ids) == 10 and ids[-1] == tokenizer.eos_token_id                # 9 words, then </s>
    assert tokenizer.decode(ids, skip_special_tokens=True) == "a red circle moving left on a white background"
    assert tokenizer.unk_token_id not in ids
    assert tokenizer("a red zebra").input_ids[2] == tokenizer.unk_token_id
    assert sorted(train.known_words(tokenizer)) == sorted(vocabulary())
    tokens = wan.tokenize(tokenizer, ["a red star", ""])
    assert tokens["input_ids"].shape == (2, 16)
    assert tokens["attention_mask"].sum(1).tolist() == [4, 1]                   # the empty prompt is </s> alone


def test_text_embeddings_are_zero_past_the_prompt_and_match_the_wan_pipeline(tmp_path):
    from diffusers import WanPipeline

    cfg = toy_config()
    tokenizer = wan.build_word_tokenizer(tmp_path, max_tokens=16)
    torch.manual_seed(0)
    text = wan.build_text_encoder(cfg, len(tokenizer)).eval()
    prompts = ["a red star", "a blue square moving up on a black background"]
    with torch.no_grad():
        ours = wan.prompt_embeddings(tokenizer, text, prompts)
        pipe = WanPipeline(tokenizer=tokenizer, text_encoder=text, vae=None, transformer=None, scheduler=None)
        theirs = pipe._get_t5_prompt_embeds(prompts, max_sequence_length=wan.text_length(tokenizer))
    assert ours.shape == (2, 16, cfg.text_hidden)
    assert torch.count_nonzero(ours[0, 4:]) == 0 and torch.count_nonzero(ours[1, 11:]) == 0
    assert torch.all(ours[0, :4].abs().sum(-1) > 0)
    torch.testing.assert_close(ours, theirs)


def test_the_training_sigmas_are_the_schedulers_flow_sigmas():
    cfg = toy_config(wan_flow_shift=2.5)
    sched = wan.scheduler(cfg)
    sched.set_timesteps(8)
    u = torch.linspace(1.0, 1 / 1000, 9)[:-1]
    torch.testing.assert_close(wan.shifted_sigma(u, cfg.wan_flow_shift), sched.sigmas[:-1].float())
    assert wan.shifted_sigma(torch.tensor([0.0, 1.0]), 3.0).tolist() == [0.0, 1.0]


def test_a_few_steps_lower_the_flow_loss_on_a_fixed_batch():
    cfg = toy_config()
    torch.manual_seed(0)
    transformer = wan.build_transformer(cfg)
    gen = torch.Generator().manual_seed(1)
    x0 = torch.randn(2, cfg.wan_z_dim, 5, 8, 8, generator=gen)
    eps = torch.randn(x0.shape, generator=gen)
    text = torch.randn(2, 16, cfg.text_hidden, generator=gen)
    sigma = torch.tensor([0.3, 0.8])
    opt = torch.optim.AdamW(transformer.parameters(), lr=3e-3)
    losses = []
    for _ in range(30):
        loss = wan.flow_matching_loss(transformer, x0, text, sigma, eps)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.75 * losses[0]     # about 2 at the start: E (eps - x0)^2 with the output near 0


def test_the_vae_trains_on_the_decoder_output_before_its_clamp():
    cfg = toy_config()
    torch.manual_seed(0)
    vae = wan.build_vae(cfg)
    z = 40 * torch.randn(1, cfg.wan_z_dim, 5, 8, 8)                  # far out: the decoder leaves [-1, 1]
    with wan.raw_decoder_output(vae) as frames:
        clamped = vae.decode(z).sample
    raw = torch.cat(frames, dim=2)
    assert raw.shape == clamped.shape == (1, 3, 5, 32, 32)
    assert raw.abs().max() > 1 and torch.equal(raw.clamp(-1, 1), clamped)
    assert not vae.decoder._forward_hooks                              # the hook is gone


def test_a_run_goes_through_every_stage_and_exports_a_wan_pipeline_folder(trained):
    from diffusers import AutoencoderKLWan, WanPipeline
    from safetensors.torch import load_file

    work, model = trained
    assert train.torch.load(work / "transformer.pt", weights_only=False)["step"] == 5
    log = [json.loads(line) for line in (work / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if r["stage"] == "vae"] == [3] and "psnr_held_out" in log[0]
    index = json.loads((model / "model_index.json").read_text())
    assert index["_class_name"] == "WanPipeline"
    assert index["transformer"] == ["diffusers", "WanTransformer3DModel"]
    assert index["text_encoder"] == ["transformers", "UMT5EncoderModel"]
    assert index["tokenizer"] == ["transformers", "PreTrainedTokenizerFast"]      # a name transformers 4 knows too
    meta = json.loads((model / "motiontransfer.json").read_text())
    assert (meta["width"], meta["height"], meta["frames"], meta["fps"]) == (32, 32, 17, 8.0)
    assert meta["trained_steps"] == 5 and sorted(meta["vocabulary"]) == sorted(vocabulary())
    assert meta["train_config"]["family"] == "wan" and meta["negative_prompt"] == ""

    for weights in model.glob("*/*.safetensors"):                        # fp16 weights, every part
        assert {t.dtype for t in load_file(weights).values()} == {torch.float16}, weights
    vae = AutoencoderKLWan.from_pretrained(model, subfolder="vae")
    assert (vae.config.scale_factor_spatial, vae.config.scale_factor_temporal) == (4, 1)
    cached = train.torch.load(work / "latents.pt", weights_only=False)
    assert vae.config.latents_mean == cached["latents_mean"] and vae.config.latents_std == cached["latents_std"]
    # the exported VAE, normalised as its config says, gives the latents the transformer was trained on
    frames, _ = train.load_frames(work)
    x = train.to_unit(torch.from_numpy(frames[:1])).transpose(1, 2)
    with torch.no_grad():
        z = vae.float().encode(x).latent_dist.mean
    mean = torch.tensor(vae.config.latents_mean).view(1, -1, 1, 1, 1)
    std = torch.tensor(vae.config.latents_std).view(1, -1, 1, 1, 1)
    assert z.shape == (1, 4, 17, 8, 8)
    torch.testing.assert_close((z - mean) / std, cached["latents"][:1], atol=0.05, rtol=0)

    pipe = WanPipeline.from_pretrained(model, torch_dtype=torch.float32)
    latents = torch.randn(1, 4, 17, 8, 8, generator=torch.Generator().manual_seed(0))
    video = pipe("a red circle on a white background", height=32, width=32, num_frames=17, latents=latents,
                 num_inference_steps=2, max_sequence_length=wan.text_length(pipe.tokenizer), output_type="np").frames
    assert video.shape == (1, 17, 32, 32, 3) and np.isfinite(video).all()


def test_an_interrupted_run_resumes_to_the_same_state(tmp_path, monkeypatch):
    straight, broken = tmp_path / "straight", tmp_path / "broken"
    assert cli.main(["train", "--family", "wan", "--work", str(straight), "--set", *TOY]) == 0

    saves = []
    original = train.save_atomic

    def dying(obj, path):                      # the run dies after its 2nd VAE and its 3rd transformer checkpoint
        original(obj, path)
        saves.append(path.name)
        if saves.count(path.name) == {"vae.pt": 2, "transformer.pt": 3}.get(path.name):
            raise KeyboardInterrupt
    monkeypatch.setattr(train, "save_atomic", dying)
    monkeypatch.setattr(wan, "save_atomic", dying)
    for _ in range(2):
        with pytest.raises(KeyboardInterrupt):
            trainer.train(broken, overrides={"family": "wan"} | dict(kv.split("=") for kv in TOY))
    assert train.torch.load(broken / "transformer.pt", weights_only=False)["step"] == 3
    assert cli.main(["train", "--work", str(broken)]) == 0           # the folder keeps its family and settings

    for name in ("vae.pt", "transformer.pt"):
        a = train.torch.load(straight / name, weights_only=False)
        b = train.torch.load(broken / name, weights_only=False)
        assert a["step"] == b["step"]
        for key in a["model" if name == "vae.pt" else "transformer"]:
            assert torch.equal(a["model" if name == "vae.pt" else "transformer"][key],
                               b["model" if name == "vae.pt" else "transformer"][key]), (name, key)
        if name == "transformer.pt":
            assert all(torch.equal(x, y) for x, y in zip(a["ema"], b["ema"]))


def test_wan_settings_are_checked_before_any_stage_runs(tmp_path, capsys):
    work = tmp_path / "w"
    assert cli.main(["train", "--family", "wan", "--work", str(work), "--set", "frames=16"]) == 2
    assert "4k+1" in capsys.readouterr().err and not (work / "data.npz").exists()
    assert cli.main(["train", "--work", str(tmp_path / "u"), "--set", "wan_layers=3"]) == 2
    assert capsys.readouterr().err.strip() == "error: wan_layers: not a setting of the unet family"
    assert cli.main(["train", "--family", "wan", "--work", str(work), "--set", "unet_channels=[8,8,8]"]) == 2
    assert "not a setting of the wan family" in capsys.readouterr().err
    unet_run = tmp_path / "unet-run"
    unet_run.mkdir()
    (unet_run / "config.json").write_text(json.dumps(train.asdict(train.TrainConfig())))
    with pytest.raises(ConfigError, match="unet-family run"):
        train.train_config(unet_run, {"family": "wan"})
    assert train.train_config(tmp_path / "fresh", {"family": "wan"}).frames == 17
    assert cli.main(["train", "--family", "wan", "--work", str(tmp_path / "empty"), "--export-only", "--export",
                     str(tmp_path / "out")]) == 2
    assert "no transformer checkpoint" in capsys.readouterr().err and not (tmp_path / "out").exists()


def test_the_samples_script_draws_a_contact_sheet_of_an_export(trained, tmp_path, monkeypatch):
    import importlib.util
    import sys
    from pathlib import Path

    import cv2

    script = Path(__file__).resolve().parents[2] / "benchmarks" / "wan_samples.py"
    spec = importlib.util.spec_from_file_location("wan_samples", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = tmp_path / "sheet.png"
    monkeypatch.setattr(sys, "argv", ["wan_samples.py", "--model", str(trained[1]), "--output", str(out),
                                      "--prompts", "2", "--steps", "2"])
    module.main()
    sheet = cv2.imread(str(out))
    assert sheet.shape == (2 * (14 + 64), 9 * 64, 3)             # 2 rows: a label, then frames 0, 2, ..., 16 at 2x
    record = json.loads(out.with_suffix(".json").read_text())
    assert record["trained_steps"] == 5 and len(record["samples"]) == 2
    assert set(record["rates"]) == {"colour_ok", "shape_ok", "background_ok"}


def test_a_run_continues_from_an_export_on_a_machine_that_kept_no_checkpoints(trained, tmp_path):
    """--init-from: the export's VAE as trained, its transformer and text encoder after the steps it records."""
    _, model = trained
    recorded = json.loads((model / "motiontransfer.json").read_text())
    work = tmp_path / "again"
    assert cli.main(["train", "--family", "wan", "--work", str(work), "--init-from", str(model),
                     "--set", *TOY, "video_steps=5"]) == 0
    vae = torch.load(work / "vae.pt", weights_only=False)
    state = torch.load(work / "transformer.pt", weights_only=False)
    assert vae["seeded_from"] == str(model) and "opt" not in vae                 # taken as trained, not retrained
    assert state["step"] == toy_config().image_steps + 5 > recorded["trained_steps"]       # to the new total
    with pytest.raises(ConfigError, match="already holds checkpoints"):
        trainer.train(work, init_from=model, overrides={"family": "wan"} | dict(kv.split("=") for kv in TOY))
