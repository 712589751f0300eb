"""The training command end to end at toy size: every stage, resume, export, and the export loads."""

import json
import math

import numpy as np

from motiontransfer import cli
from motiontransfer.models import load_model
from motiontransfer.shapes import training as train
from motiontransfer.shapes.world import vocabulary

TOY = ["clips=12", "frames=4", "vae_steps=3", "vae_batch=4", "vae_channels=[16,16,16]", "unet_channels=[16,16,32]",
       "image_steps=2", "image_batch=4", "video_steps=2", "video_batch=2", "text_hidden=16", "checkpoint_minutes=0"]


def test_training_runs_resumes_and_exports_a_loadable_checkpoint(tmp_path):
    work, out = tmp_path / "work", tmp_path / "model"
    assert cli.main(["train", "--work", str(work), "--export", str(out), "--set", *TOY]) == 0
    state = train.torch.load(work / "unet.pt", weights_only=False)
    assert state["step"] == 4
    log = [json.loads(line) for line in (work / "log.jsonl").read_text().splitlines()]
    assert any(r["stage"] == "vae" for r in log)
    before = (work / "unet.pt").stat().st_mtime_ns
    assert cli.main(["train", "--work", str(work)]) == 0             # everything done: nothing is trained again
    assert (work / "unet.pt").stat().st_mtime_ns == before

    model = load_model(str(out))
    assert model.defaults.width == 32 and model.defaults.frames == 4 and model.defaults.negative_prompt == ""
    assert (out / "tokenizer" / "vocab.json").exists() and (out / "tokenizer" / "merges.txt").exists()
    for word in vocabulary():                                # one token per word of the world
        assert len(model.tokenizer(word, add_special_tokens=False).input_ids) == 1
    assert "up_blocks.1.upsamplers.0" in dict(model.unet.named_modules())
    frames = np.zeros((4, 32, 32, 3), np.uint8)
    assert model.decode_latents(model.encode_frames(frames)).shape == (4, 32, 32, 3)


def test_training_continues_from_an_exported_model(tmp_path):
    first, out = tmp_path / "first", tmp_path / "model"
    assert cli.main(["train", "--work", str(first), "--export", str(out), "--set", *TOY]) == 0
    again = tmp_path / "again"
    more = [kv for kv in TOY if not kv.startswith("video_steps")] + ["video_steps=4"]
    assert cli.main(["train", "--work", str(again), "--init-from", str(out), "--export", str(tmp_path / "next"),
                     "--set", *more]) == 0
    state = train.torch.load(again / "unet.pt", weights_only=False)
    assert state["step"] == 6                                # 4 done before, 2 more now
    assert json.loads((tmp_path / "next" / "motiontransfer.json").read_text())["trained_steps"] == 6


def test_single_frame_steps_can_be_mixed_into_the_video_phase():
    cfg = train.TrainConfig(image_steps=2, image_every=3)
    assert [train.is_image_step(cfg, s) for s in range(9)] == [True, True, False, False, True, False, False, True,
                                                               False]
    assert not any(train.is_image_step(train.TrainConfig(image_steps=2), s) for s in range(2, 50))


def test_a_continuation_gets_its_own_warm_up_and_cosine():
    cfg = train.TrainConfig(image_steps=50, video_steps=150, lr=1e-3, warmup=10, schedule_from=100)
    assert math.isclose(train.unet_lr(cfg, 100), 1e-4)             # warm-up restarts at the continuation
    assert math.isclose(train.unet_lr(cfg, 109), 1e-3)
    assert math.isclose(train.unet_lr(cfg, 200), 5e-5)             # and decays to 5% by the last step
    assert train.unet_lr(train.TrainConfig(image_steps=50, video_steps=150, warmup=10), 100) < 5e-4


def test_per_channel_latent_normalisation_is_exported_with_the_model(tmp_path):
    work, out = tmp_path / "work", tmp_path / "model"
    assert cli.main(["train", "--work", str(work), "--export", str(out), "--set", *TOY, "latent_norm=channel"]) == 0
    cfg = train.TrainConfig(**{k: tuple(v) if isinstance(v, list) else v
                               for k, v in json.loads((work / "config.json").read_text()).items()})
    latents, _, vae_config = train.load_latents(cfg, work)
    per_channel = latents.transpose(0, 1).flatten(1)
    assert train.torch.allclose(per_channel.mean(1), train.torch.zeros(4), atol=1e-5)
    assert train.torch.allclose(per_channel.std(1), train.torch.ones(4), atol=1e-5)
    model = load_model(str(out))
    assert model.vae.config.latents_mean == vae_config["latents_mean"] and model.scaling_factor == 1.0
    # the model encodes its training frames to the latents the UNet was trained on (fp16 export: loose)
    frames, _ = train.load_frames(work)
    encoded = model.encode_frames(frames[0])
    assert train.torch.allclose(encoded, latents[:1], atol=0.05)


def test_a_continuation_at_another_frame_size_fine_tunes_the_vae_there(tmp_path):
    first, out = tmp_path / "first", tmp_path / "model"
    assert cli.main(["train", "--work", str(first), "--export", str(out), "--set", *TOY]) == 0      # 32x32
    larger = tmp_path / "larger"
    more = [kv for kv in TOY if not kv.startswith("video_steps")] + ["video_steps=4", "size=48", "texture_prob=0.5"]
    assert cli.main(["train", "--work", str(larger), "--init-from", str(out), "--export", str(tmp_path / "next"),
                     "--set", *more]) == 0
    log = [json.loads(line) for line in (larger / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if r["stage"] == "vae"] == [3]             # all 3 VAE steps again, at 48x48
    assert train.torch.load(larger / "unet.pt", weights_only=False)["step"] == 6
    model = load_model(str(tmp_path / "next"))
    assert model.defaults.width == 48 and model.unet.config.sample_size == 12
    assert "star" in model.defaults.vocabulary
    frames, _ = train.load_frames(larger)
    assert frames.shape[2:4] == (48, 48)
    assert model.decode_latents(model.encode_frames(frames[0])).shape == (4, 48, 48, 3)


def test_a_bad_setting_is_one_line_before_any_stage_runs(tmp_path, capsys):
    assert cli.main(["train", "--work", str(tmp_path / "w"), "--set", "no_such_field=1"]) == 2
    assert capsys.readouterr().err.strip() == "error: unknown TrainConfig field 'no_such_field'"
    assert cli.main(["train", "--work", str(tmp_path / "w"), "--set", "latent_norm=other"]) == 2
    assert not (tmp_path / "w" / "data.npz").exists()


def test_a_continuation_learns_the_words_its_start_lacks_and_keeps_the_others(tmp_path):
    from transformers import CLIPTextModel, CLIPTokenizer

    first, out = tmp_path / "first", tmp_path / "model"
    assert cli.main(["train", "--work", str(first), "--export", str(out), "--set", *TOY]) == 0
    cfg = train.train_config(first)
    position_words = {"from", "top", "bottom", "middle"}
    full = json.loads((out / "tokenizer" / "vocab.json").read_text())     # an older export: no position words
    train.build_tokenizer(out / "tokenizer", cfg.max_tokens, [w for w in vocabulary() if w not in position_words])
    older = json.loads((out / "tokenizer" / "vocab.json").read_text())
    text = CLIPTextModel.from_pretrained(out, subfolder="text_encoder")
    train.carry_embeddings(cfg, text, full, older).half().save_pretrained(out / "text_encoder")
    old_tok = CLIPTokenizer.from_pretrained(out / "tokenizer")
    assert not position_words & set(train.known_words(old_tok))

    nxt = tmp_path / "next"                                  # no steps left: the export is the seeded state
    assert cli.main(["train", "--work", str(tmp_path / "again"), "--init-from", str(out), "--export", str(nxt),
                     "--set", *TOY, "position_prob=0.5"]) == 0
    new_tok = CLIPTokenizer.from_pretrained(nxt / "tokenizer")
    assert position_words <= set(json.loads((nxt / "motiontransfer.json").read_text())["vocabulary"])
    before = CLIPTextModel.from_pretrained(out, subfolder="text_encoder").get_input_embeddings().weight
    after = CLIPTextModel.from_pretrained(nxt, subfolder="text_encoder").get_input_embeddings().weight
    moved = [w for w in vocabulary() if w not in position_words and new_tok.convert_tokens_to_ids(w + "</w>")
             != old_tok.convert_tokens_to_ids(w + "</w>")]
    assert moved                                             # ids differ between the two tokenizers ...
    for w in vocabulary():
        (i,), = [new_tok(w, add_special_tokens=False).input_ids]
        if w in position_words:
            assert train.torch.allclose(after[i], before.float().mean(0).to(after.dtype), atol=1e-3)
        else:                                                # ... yet every known word keeps its embedding
            (j,), = [old_tok(w, add_special_tokens=False).input_ids]
            assert train.torch.equal(after[i], before[j]), w
