"""The shapes model on the Wan2.1 architecture (`family="wan"` of `trainer.train`): the real diffusers and
transformers classes at toy sizes, trained by flow matching, exported in the `WanPipeline` folder layout.

Stages (in the work folder, after `training.stage_data` has rendered the clips):
    tokenizer  a word-level tokenizer over the world's vocabulary (`build_word_tokenizer`); `tokenizer/`
    vae        `AutoencoderKLWan`, 4x spatial and no temporal compression, on short clips and single frames
               (reconstruction + a small KL); `vae.pt`
    encode     every clip to latents once (posterior mean), normalised per channel as Wan does,
               z' = (z - latents_mean) / latents_std; `latents.pt`
    denoiser   `UMT5EncoderModel` + `WanTransformer3DModel` jointly, the image-then-video curriculum of the
               UNet family (`training.train_denoiser`) with the flow-matching objective below; `transformer.pt`
    export     EMA weights, fp16, `WanPipeline.save_pretrained` plus `motiontransfer.json`

Flow matching, the Wan convention (notation of diffusers' `FlowMatchEulerDiscreteScheduler`):
    x0       normalised VAE latent, (B, C, F, h, w)
    eps      ~ N(0, I), same shape
    sigma    = S u / (1 + (S - 1) u), u ~ U(0, 1), S = `wan_flow_shift` (the scheduler's `flow_shift`)
    x_sigma  = (1 - sigma) x0 + sigma eps
    v        = eps - x0, the target; the model is called at timestep = sigma * num_train_timesteps (1000)
    loss     = mean (v_hat - v)^2

Text convention (training and inference alike; `prompt_embeddings`): prompts padded to
min(512, tokenizer.model_max_length) tokens with their attention mask, the encoder run with the mask, and the
embeddings past each prompt's true length set to zero, as `WanPipeline._get_t5_prompt_embeds` does.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
from dataclasses import asdict
from pathlib import Path

import torch
import torch.nn.functional as F

from ..errors import ConfigError
from ..video import atomic_path
from . import world
from .training import (Log, TrainConfig, _autocast, _load, denoiser_done, encode_clips, known_words, load_frames,
                       normalise_per_channel, psnr, save_atomic, stage_data, to_unit, train_denoiser, train_vae,
                       vae_done)

logger = logging.getLogger(__name__)

NUM_TRAIN_TIMESTEPS = 1000
SPECIAL_TOKENS = ("<pad>", "</s>", "<unk>")          # ids 0, 1, 2: T5's pad, eos and unk ids


# ----------------------------------------------------------------------------------------------------- models

def build_word_tokenizer(directory: Path, max_tokens: int, words: list[str] | None = None):
    """A word-level tokenizer (one id per word of `words`, default the world's vocabulary), split on whitespace
    and punctuation, lower-cased, an end-of-sequence token appended as T5's tokenizers do; saved to `directory`
    as a `PreTrainedTokenizerFast` (`AutoTokenizer.from_pretrained(directory)` loads it). Returns it."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    words = world.vocabulary() if words is None else words
    vocab = {token: i for i, token in enumerate(SPECIAL_TOKENS)}
    for word in words:
        vocab.setdefault(word.lower(), len(vocab))
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.normalizer = normalizers.Lowercase()
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    core.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", vocab["</s>"])])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", eos_token="</s>",
                                        unk_token="<unk>", model_max_length=max_tokens)
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(directory)
    return tokenizer


def text_length(tokenizer) -> int:
    """Tokens a prompt is padded to: `WanPipeline`'s 512, or the tokenizer's own limit if shorter."""
    return min(512, tokenizer.model_max_length)


def tokenize(tokenizer, prompts: list[str]) -> dict[str, torch.Tensor]:
    """{"input_ids", "attention_mask"}: (B, T) int64, T = `text_length(tokenizer)`."""
    out = tokenizer(prompts, padding="max_length", max_length=text_length(tokenizer), truncation=True,
                    add_special_tokens=True, return_attention_mask=True, return_tensors="pt")
    return {"input_ids": out.input_ids, "attention_mask": out.attention_mask}


def encode_tokens(text_encoder, tokens: dict[str, torch.Tensor]) -> torch.Tensor:
    """(B, T, D) embeddings of `tokenize`'s output, zero past each prompt's true length."""
    mask = tokens["attention_mask"]
    hidden = text_encoder(tokens["input_ids"], attention_mask=mask).last_hidden_state
    return hidden * mask.unsqueeze(-1).to(hidden.dtype)


def prompt_embeddings(tokenizer, text_encoder, prompts: list[str]) -> torch.Tensor:
    """(B, T, D) text conditioning of `prompts` as the model was trained with it (the module's text convention)."""
    device = next(text_encoder.parameters()).device
    tokens = {k: v.to(device) for k, v in tokenize(tokenizer, prompts).items()}
    return encode_tokens(text_encoder, tokens)


def build_text_encoder(cfg: TrainConfig, vocab_size: int):
    from transformers import UMT5Config, UMT5EncoderModel

    config = UMT5Config(vocab_size=vocab_size, d_model=cfg.text_hidden, d_kv=cfg.wan_text_head_dim,
                        d_ff=cfg.wan_text_ffn, num_layers=cfg.text_layers, num_heads=cfg.wan_text_heads,
                        relative_attention_num_buckets=8, relative_attention_max_distance=cfg.max_tokens,
                        dropout_rate=0.0, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)
    return UMT5EncoderModel(config)


def build_vae(cfg: TrainConfig):
    """`AutoencoderKLWan` with 2 spatial downsamplings (factor 4) and none in time (one latent frame a frame)."""
    from diffusers import AutoencoderKLWan

    levels = len(cfg.wan_vae_mult)
    return AutoencoderKLWan(base_dim=cfg.wan_vae_dim, z_dim=cfg.wan_z_dim, dim_mult=list(cfg.wan_vae_mult),
                            num_res_blocks=1, attn_scales=[], temperal_downsample=[False] * (levels - 1),
                            latents_mean=[0.0] * cfg.wan_z_dim, latents_std=[1.0] * cfg.wan_z_dim,
                            scale_factor_temporal=1, scale_factor_spatial=2 ** (levels - 1))


def build_transformer(cfg: TrainConfig):
    """`WanTransformer3DModel` with patch (1, 1, 1): one token per latent pixel, the full grid at every block."""
    from diffusers import WanTransformer3DModel

    return WanTransformer3DModel(patch_size=(1, 1, 1), num_attention_heads=cfg.wan_heads,
                                 attention_head_dim=cfg.wan_head_dim, in_channels=cfg.wan_z_dim,
                                 out_channels=cfg.wan_z_dim, text_dim=cfg.text_hidden, freq_dim=cfg.wan_freq_dim,
                                 ffn_dim=cfg.wan_ffn, num_layers=cfg.wan_layers, cross_attn_norm=True,
                                 qk_norm="rms_norm_across_heads")


@contextlib.contextmanager
def seeded(seed: int):
    """Random initialisation from `seed`, whatever ran before in the process (a resumed run builds its networks
    after other stages than a fresh one); the global generator is left as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def parameter_count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# ------------------------------------------------------------------------------------------------ objective

def shifted_sigma(u: torch.Tensor, shift: float) -> torch.Tensor:
    """sigma = S u / (1 + (S - 1) u): the scheduler's `flow_shift` applied to a uniform draw."""
    return shift * u / (1 + (shift - 1) * u)


def flow_matching_loss(transformer, x0: torch.Tensor, text: torch.Tensor, sigma: torch.Tensor,
                       eps: torch.Tensor) -> torch.Tensor:
    """Mean squared error of the predicted velocity against v = eps - x0 at x_sigma = (1 - sigma) x0 + sigma eps.

    x0, eps (B, C, F, h, w); text (B, T, D); sigma (B,) in [0, 1].
    """
    s = sigma.view(-1, 1, 1, 1, 1)
    x_sigma = (1 - s) * x0 + s * eps
    pred = transformer(hidden_states=x_sigma, timestep=sigma * NUM_TRAIN_TIMESTEPS, encoder_hidden_states=text,
                       return_dict=False)[0]
    return F.mse_loss(pred.float(), eps - x0)


def flow_objective(cfg: TrainConfig):
    """The step's loss for `training.train_denoiser`: draws u, then eps, from the loop's generator."""
    def objective(transformer, text_encoder, x0, tokens, gen, device):
        sigma = shifted_sigma(torch.rand(len(x0), generator=gen), cfg.wan_flow_shift)
        eps = torch.randn(x0.shape, generator=gen)
        x0, eps, sigma = x0.to(device), eps.to(device), sigma.to(device)
        tokens = {k: v.to(device) for k, v in tokens.items()}
        with _autocast(device):
            return flow_matching_loss(transformer, x0, encode_tokens(text_encoder, tokens), sigma, eps)
    return objective


# ----------------------------------------------------------------------------------------------------- stages

@contextlib.contextmanager
def raw_decoder_output(vae):
    """Collects what `vae.decoder` returns, one (B, 3, 1, H, W) a frame, before `AutoencoderKLWan.decode`
    clamps it to [-1, 1]: the clamp passes no gradient to a pixel decoded past the range, so training takes its
    loss on these. The hook is removed on exit."""
    outputs: list[torch.Tensor] = []
    handle = vae.decoder.register_forward_hook(lambda module, args, out: outputs.append(out))
    try:
        yield outputs
    finally:
        handle.remove()


def vae_loss(vae, x: torch.Tensor, gen: torch.Generator, kl_weight: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(reconstruction + kl_weight * KL, reconstruction) of a batch of clips x (B, 3, F, H, W), F = 4k+1.

    Reconstruction: MSE + 0.5 L1 of the decoded sample of the posterior, before the clamp; KL summed over the
    latent and divided by the pixel count of a clip (the UNet family's convention: `vae_kl` means the same)."""
    posterior = vae.encode(x).latent_dist
    z = posterior.mean + posterior.std * torch.randn(posterior.mean.shape, generator=gen).to(x.device)
    with raw_decoder_output(vae) as frames:
        vae.decode(z)
    rec = torch.cat(frames, dim=2).float()
    kl = 0.5 * (posterior.mean.pow(2) + posterior.var - 1 - posterior.logvar)
    kl = kl.flatten(1).sum(1).mean() / x[0].numel()
    return F.mse_loss(rec, x) + 0.5 * F.l1_loss(rec, x) + kl_weight * kl, rec


def held_out_clips(clips: int) -> int:
    """Clips at the end of the data set that the VAE never trains on (for its PSNR)."""
    return min(64, clips // 10)


def vae_psnr(vae, clips_uint8: torch.Tensor, device: torch.device, batch: int = 8) -> float:
    """PSNR (dB) of the posterior mean's reconstruction of whole clips (N, F, H, W, 3) uint8."""
    errors = []
    with torch.no_grad():
        for i in range(0, len(clips_uint8), batch):
            x = to_unit(clips_uint8[i:i + batch]).transpose(1, 2).to(device)            # (b, 3, F, H, W)
            rec = vae.decode(vae.encode(x).latent_dist.mean).sample.float()
            errors.append(F.mse_loss(rec.clamp(-1, 1), x.clamp(-1, 1), reduction="none").flatten(1).mean(1))
    mse = torch.cat(errors).mean().item()
    return 10 * math.log10(4.0 / max(mse, 1e-12))


def stage_vae(cfg: TrainConfig, work: Path, log: Log, device: torch.device = torch.device("cpu")) -> None:
    """Each step: `wan_vae_clips` windows of `wan_vae_clip_frames` consecutive frames (4k+1: the causal encoder
    takes frame 0 alone, then chunks of 4) and `vae_batch` single frames; held out: the last clips, whole."""
    if vae_done(cfg, work):
        return
    frames, _ = load_frames(work)
    clips = torch.from_numpy(frames)                                          # (N, F, H, W, 3) uint8
    n_held = held_out_clips(len(clips))
    held_out, clips = clips[len(clips) - n_held:], clips[:len(clips) - n_held]
    window = cfg.wan_vae_clip_frames

    def step_loss(vae, gen, device):
        idx = torch.randint(len(clips), (cfg.wan_vae_clips,), generator=gen)
        start = torch.randint(cfg.frames - window + 1, (cfg.wan_vae_clips,), generator=gen)
        video = torch.stack([clips[i, s:s + window] for i, s in zip(idx.tolist(), start.tolist())])
        single = clips[torch.randint(len(clips), (cfg.vae_batch,), generator=gen),
                       torch.randint(cfg.frames, (cfg.vae_batch,), generator=gen)].unsqueeze(1)
        losses = []
        for batch in (video, single):                                    # (b, F, H, W, 3) -> (b, 3, F, H, W)
            x = to_unit(batch).transpose(1, 2).to(device)
            with _autocast(device):
                loss, rec = vae_loss(vae, x, gen, cfg.vae_kl)
            losses.append(loss)
        loss = losses[0] + losses[1]
        return loss, {"loss": loss.item(), "clip_loss": losses[0].item(), "frame_loss": losses[1].item(),
                      "psnr": psnr(rec.detach(), x)}

    with seeded(cfg.seed):
        vae = build_vae(cfg)
    train_vae(cfg, work, log, device, vae, step_loss,
              lambda vae: vae_psnr(vae, held_out if len(held_out) else clips[:2], device))


def load_vae(cfg: TrainConfig, work: Path):
    vae = build_vae(cfg)
    vae.load_state_dict(_load(work / "vae.pt")["model"])
    return vae.eval().requires_grad_(False)


def stage_encode(cfg: TrainConfig, work: Path, device: torch.device = torch.device("cpu")) -> None:
    """Posterior means of whole clips, (N, C, F, h, w), normalised per channel; the statistics are stored with
    them and go into the exported VAE config as `latents_mean` / `latents_std`."""
    path = work / "latents.pt"
    if path.exists():
        return
    frames, captions = load_frames(work)
    vae = load_vae(cfg, work).to(device)
    raw = encode_clips(frames, 16, lambda clips: vae.encode(to_unit(clips).transpose(1, 2).to(device)).latent_dist.mean)
    latents, mean, std = normalise_per_channel(raw)
    save_atomic({"latents": latents, "captions": captions, "latents_mean": mean, "latents_std": std}, path)


def stage_denoiser(cfg: TrainConfig, work: Path, log: Log, device: torch.device = torch.device("cpu")) -> None:
    from transformers import AutoTokenizer

    if denoiser_done(cfg, work, "transformer"):
        return
    cached = _load(work / "latents.pt")
    tokenizer = AutoTokenizer.from_pretrained(work / "tokenizer")
    with seeded(cfg.seed + 3):
        transformer, text = build_transformer(cfg), build_text_encoder(cfg, len(tokenizer))
    logger.info("transformer %d parameters, text encoder %d", parameter_count(transformer), parameter_count(text))
    train_denoiser(cfg, work, log, device, name="transformer", model=transformer, text=text,
                   latents=cached["latents"], tokens=tokenize(tokenizer, cached["captions"]),
                   empty=tokenize(tokenizer, [""]), objective=flow_objective(cfg))


# ----------------------------------------------------------------------------------------------------- export

def scheduler(cfg: TrainConfig):
    """The scheduler the hub's Wan2.1 folders list, with this model's shift."""
    from diffusers import UniPCMultistepScheduler

    return UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True,
                                   flow_shift=cfg.wan_flow_shift, num_train_timesteps=NUM_TRAIN_TIMESTEPS)


def portable_tokenizer_class(folder: Path) -> None:
    """Names the tokenizer `PreTrainedTokenizerFast` in `model_index.json` and `tokenizer_config.json`:
    transformers 5 saves its fast tokenizers as `TokenizersBackend`, a name transformers 4 lacks; both versions
    know `PreTrainedTokenizerFast` (in 5, an alias of the same class)."""
    index_path, config_path = folder / "model_index.json", folder / "tokenizer" / "tokenizer_config.json"
    index = json.loads(index_path.read_text())
    index["tokenizer"] = ["transformers", "PreTrainedTokenizerFast"]
    index_path.write_text(json.dumps(index, indent=2) + "\n")
    config = json.loads(config_path.read_text())
    config["tokenizer_class"] = "PreTrainedTokenizerFast"
    config_path.write_text(json.dumps(config, indent=2) + "\n")


def export(cfg: TrainConfig, work: Path, out: Path, *, dtype=torch.float16) -> None:
    """Writes the EMA weights in the `WanPipeline` folder layout, plus `motiontransfer.json`."""
    from diffusers import WanPipeline
    from transformers import AutoTokenizer

    if not (work / "transformer.pt").exists():
        raise ConfigError(f"{work} holds no transformer checkpoint yet: nothing to export")
    tokenizer = AutoTokenizer.from_pretrained(work / "tokenizer")
    state = _load(work / "transformer.pt")
    transformer, text = build_transformer(cfg), build_text_encoder(cfg, len(tokenizer))
    with torch.no_grad():
        for p, e in zip(list(transformer.parameters()) + list(text.parameters()), state["ema"]):
            p.copy_(e)
    cached = _load(work / "latents.pt")
    vae = load_vae(cfg, work)
    vae.register_to_config(latents_mean=cached["latents_mean"], latents_std=cached["latents_std"])
    pipe = WanPipeline(tokenizer=tokenizer, text_encoder=text.to(dtype), vae=vae.to(dtype),
                       transformer=transformer.to(dtype), scheduler=scheduler(cfg))
    with atomic_path(out, keep_suffix=False) as tmp:
        pipe.save_pretrained(tmp, safe_serialization=True)
        portable_tokenizer_class(tmp)
        (tmp / "motiontransfer.json").write_text(json.dumps({
            "width": cfg.size, "height": cfg.size, "frames": cfg.frames, "fps": 8.0, "negative_prompt": "",
            "method_defaults": {},
            "vocabulary": known_words(tokenizer),
            "trained_steps": state["step"], "train_config": asdict(cfg)}, indent=2))
    logger.info("exported step %d to %s", state["step"], out)


def seed_from_export(cfg: TrainConfig, work: Path, source: Path) -> None:
    """Starts an empty work folder from a Wan export (`export`), so that training continues on a machine that
    kept no checkpoints: the export's tokenizer, its VAE taken as trained (the latents are encoded again from
    it), and its transformer and text encoder as the state after the steps it records, without optimiser
    moments (the weights are the export's fp16 moving average)."""
    import shutil

    from diffusers import AutoencoderKLWan, WanTransformer3DModel
    from transformers import UMT5EncoderModel

    if (work / "vae.pt").exists() or (work / "transformer.pt").exists():
        raise ConfigError(f"{work} already holds checkpoints; --init-from needs an empty work folder")
    recorded = json.loads((source / "motiontransfer.json").read_text())
    if recorded.get("train_config", {}).get("family") != "wan":
        raise ConfigError(f"{source} is not an export of a Wan-family shapes model")
    shutil.copytree(source / "tokenizer", work / "tokenizer", dirs_exist_ok=True)
    vae = AutoencoderKLWan.from_pretrained(source, subfolder="vae", torch_dtype=torch.float32)
    save_atomic({"model": vae.state_dict(), "step": cfg.vae_steps, "seeded_from": str(source)}, work / "vae.pt")
    transformer = WanTransformer3DModel.from_pretrained(source, subfolder="transformer", torch_dtype=torch.float32)
    text = UMT5EncoderModel.from_pretrained(source, subfolder="text_encoder", dtype=torch.float32)
    params = [p.detach().clone() for p in list(transformer.parameters()) + list(text.parameters())]
    save_atomic({"transformer": transformer.state_dict(), "text": text.state_dict(), "ema": params,
                 "step": recorded["trained_steps"], "seeded_from": str(source)}, work / "transformer.pt")


def run(cfg: TrainConfig, work: Path, log: Log, device: torch.device) -> None:
    """Every stage not yet done, in order (`trainer.train` calls it for `family="wan"`)."""
    stage_data(cfg, work)
    if not (work / "tokenizer" / "tokenizer.json").exists():
        build_word_tokenizer(work / "tokenizer", cfg.max_tokens)
    stage_vae(cfg, work, log, device)
    stage_encode(cfg, work, device)
    stage_denoiser(cfg, work, log, device)
