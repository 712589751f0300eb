"""Training of the shipped shapes model: a small text-to-video latent diffusion model in diffusers format.

One command runs every stage in order and resumes from the last checkpoint of the stage it was in:

    motiontransfer train --work checkpoints/shapes [--export src/motiontransfer/shapes/weights/model]
        [--export-only] [--init-from MODEL_DIR] [--set KEY=VALUE ...] [--device cpu|cuda] [--family unet|wan]

This module is the UNet family (the default, `family="unet"`) and the machinery both families share: the data,
the resumable VAE loop (`train_vae`), the denoiser loop with its image-then-video curriculum, EMA and
checkpoints (`train_denoiser`), the config. The Wan family's parts and objective are in `training_wan`; the
entry point over both, `train`, is in `trainer`.

Stages (each writes into the work folder, outside git):
    data     render the synthetic world's clips (`world.make_dataset`) once, to `data.npz`
    vae      train `AutoencoderKL` (factor 4) on single frames; `vae.pt`
    encode   encode every clip to latents once (posterior mean x scaling factor); `latents.pt`
    unet     train `CLIPTextModel` + `UNet3DConditionModel` jointly on the cached latents, first on single frames
             (num_frames = 1: colour, shape and background bind to words), then on whole clips (motion), with
             a single-frame step every `image_every` steps if set, so the binding is kept up;
             `unet.pt` holds the weights, their exponential moving average, the optimiser and the step
    export   writes the EMA weights as a diffusers folder (unet/, vae/, text_encoder/, tokenizer/, scheduler/)

The noise schedule is ZeroScope's (`tools.zeroscope.SCHEDULER_CONFIG`: scaled_linear 0.00085 to 0.012, 1000
steps, epsilon prediction), so the reference preset applies to this model unchanged. Progress goes to a tqdm bar
and to `log.jsonl`.

`--device cuda` trains on a GPU (bf16 autocast); every random draw still comes from CPU generators, so a run
is the same draw for draw on any device, and checkpoints load anywhere (they are read with map_location).
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..errors import ConfigError
from ..tools.zeroscope import SCHEDULER_CONFIG
from ..video import atomic_path
from . import world

logger = logging.getLogger(__name__)



@dataclass(frozen=True)
class TrainConfig:
    # "unet": UNet3DConditionModel + AutoencoderKL + CLIP, DDPM noise (this module); "wan": WanTransformer3DModel
    # + AutoencoderKLWan + UMT5, flow matching (`training_wan`). Fields named wan_* are the Wan family's only;
    # vae_channels, latent_norm, unet_* and min_snr_gamma the UNet family's only; the others serve both.
    family: str = "unet"
    seed: int = 0
    size: int = 32                  # pixels, square frames
    frames: int = 16                # frames per clip
    clips: int = 20_000             # training clips
    texture_prob: float = 0.0       # share of clips with a textured background (world version 2)
    light: float = 0.0              # strength of the world's fixed light on every clip (world version 3)
    position_prob: float = 0.0      # share of captions that say where the object starts (world version 4)
    max_tokens: int = 16            # tokenizer model_max_length (captions have at most 14 words)
    # VAE
    vae_channels: tuple[int, ...] = (32, 64, 64)   # 2 downsamplings: factor 4, latent 4 x 8 x 8
    vae_steps: int = 5_000
    vae_batch: int = 32             # frames per step
    vae_lr: float = 1e-3
    vae_kl: float = 1e-6
    # "global": latents times one scaling factor (1 / their std), as SD and ZeroScope; "channel": each latent
    # channel shifted and scaled to mean 0, std 1 (diffusers' `latents_mean` / `latents_std` VAE config), so a
    # channel of small spread is not drowned by the noise long before the others. On the shapes model it did
    # no better than "global" in an 800-step fine-tune (a scratch experiment)
    latent_norm: str = "global"
    # text encoder
    text_hidden: int = 64
    text_layers: int = 2
    # UNet
    # Three levels, not ZeroScope's four: on an 8x8 latent the hooked `up_blocks.1` then works at 4x4
    # (ZeroScope's at 10x18) instead of 2x2, so its spatial means still see where the object is.
    unet_channels: tuple[int, ...] = (48, 64, 96)
    unet_layers: int = 1            # layers_per_block; up blocks get one more, so `resnets.1` exists
    image_steps: int = 1_500        # single-frame steps (batch image_batch)
    image_batch: int = 64
    video_steps: int = 6_000        # whole-clip steps (batch video_batch)
    video_batch: int = 8
    image_every: int = 0            # in the video phase, every n-th step a single-frame step (0: never)
    lr: float = 5e-4
    warmup: int = 200
    schedule_from: int = 0          # the learning-rate warm-up and cosine run from this step to the last
    ema: float = 0.999
    caption_dropout: float = 0.1    # empty prompt, for classifier-free guidance
    min_snr_gamma: float = 5.0      # loss weight min(SNR, gamma) / SNR (Hang et al. 2023)
    checkpoint_minutes: float = 4.0
    # Wan family (sizes chosen in training/README.md, from measured step times)
    wan_vae_dim: int = 32                       # AutoencoderKLWan base_dim
    wan_vae_mult: tuple[int, ...] = (1, 2, 2)   # channel multipliers; len - 1 spatial downsamplings (4x)
    wan_z_dim: int = 8                          # latent channels
    wan_vae_clips: int = 4                      # clips per VAE step (beside vae_batch single frames) ...
    wan_vae_clip_frames: int = 5                # ... of this many consecutive frames (4k+1)
    wan_text_heads: int = 2                     # UMT5: heads of wan_text_head_dim, feed-forward width
    wan_text_head_dim: int = 32
    wan_text_ffn: int = 128
    wan_layers: int = 6                         # WanTransformer3DModel blocks
    wan_heads: int = 4                          # attention heads of wan_head_dim: width 128
    wan_head_dim: int = 32
    wan_ffn: int = 256
    wan_freq_dim: int = 64                      # sinusoidal timestep embedding size
    wan_flow_shift: float = 2.0                 # sigma = S u / (1 + (S - 1) u), training and the scheduler alike


# ----------------------------------------------------------------------------------------------------- models

def build_tokenizer(directory: Path, max_tokens: int, words: list[str] | None = None):
    """A CLIP BPE tokenizer whose merges turn every word of `words` (default: the world's vocabulary) into one
    token; vocab.json and merges.txt are written beside the tokenizer's own files.

    The merges are learnt with the `tokenizers` BPE trainer on the vocabulary itself, so applying them
    reproduces each whole word; unknown words fall apart into characters, as in any BPE.
    """
    from tokenizers import Tokenizer, models, trainers
    from transformers import CLIPTokenizer

    words = world.vocabulary() if words is None else words
    bpe = Tokenizer(models.BPE(end_of_word_suffix="</w>"))
    bpe.train_from_iterator(words, trainers.BpeTrainer(vocab_size=100_000, end_of_word_suffix="</w>",
                                                       show_progress=False))
    model = json.loads(bpe.to_str())["model"]
    vocab = dict(model["vocab"])
    for special in ("<|startoftext|>", "<|endoftext|>"):
        vocab[special] = len(vocab)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "vocab.json").write_text(json.dumps(vocab, indent=0))
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    (directory / "merges.txt").write_text("#version: 0.2\n" + "".join(m + "\n" for m in merges))
    tokenizer = CLIPTokenizer(str(directory / "vocab.json"), str(directory / "merges.txt"),
                              model_max_length=max_tokens, pad_token="<|endoftext|>")
    for word in words:
        ids = tokenizer(word, add_special_tokens=False).input_ids
        if len(ids) != 1:
            raise RuntimeError(f"tokenizer splits {word!r} into {len(ids)} tokens")
    tokenizer.save_pretrained(directory)
    return tokenizer


def build_vae(cfg: TrainConfig):
    from diffusers import AutoencoderKL

    n = len(cfg.vae_channels)
    return AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, sample_size=cfg.size,
                         down_block_types=("DownEncoderBlock2D",) * n, up_block_types=("UpDecoderBlock2D",) * n,
                         block_out_channels=cfg.vae_channels, layers_per_block=1, norm_num_groups=16)


def build_text_encoder(cfg: TrainConfig, vocab_size: int):
    from transformers import CLIPTextConfig, CLIPTextModel

    config = CLIPTextConfig(vocab_size=vocab_size, hidden_size=cfg.text_hidden,
                            intermediate_size=2 * cfg.text_hidden, num_hidden_layers=cfg.text_layers,
                            num_attention_heads=4, max_position_embeddings=cfg.max_tokens,
                            bos_token_id=vocab_size - 2, eos_token_id=vocab_size - 1, pad_token_id=vocab_size - 1)
    return CLIPTextModel(config)


def known_words(tokenizer, words: list[str] | None = None) -> list[str]:
    """The words of `words` (default: the world's vocabulary) that `tokenizer` keeps whole, as one token."""
    words = world.vocabulary() if words is None else words
    return [w for w in words if len(tokenizer(w, add_special_tokens=False).input_ids) == 1]


def carry_embeddings(cfg: TrainConfig, text, old_vocab: dict[str, int], new_vocab: dict[str, int]):
    """A text encoder for the tokenizer of `new_vocab` with `text`'s weights: every token the two vocabularies
    share keeps its embedding row (ids differ between them), a new token starts at the mean of the old rows."""
    carried = build_text_encoder(cfg, len(new_vocab))
    old = text.get_input_embeddings().weight.detach()
    key, = [name for name, p in text.named_parameters() if p is text.get_input_embeddings().weight]
    rows = old.mean(dim=0, keepdim=True).repeat(len(new_vocab), 1)
    shared = [(i, old_vocab[token]) for token, i in new_vocab.items() if token in old_vocab]
    rows[[i for i, _ in shared]] = old[[j for _, j in shared]]
    carried.load_state_dict(text.state_dict() | {key: rows})
    return carried


def build_unet(cfg: TrainConfig):
    """ZeroScope's block types at a small width, so the default hooked layer names apply unchanged."""
    from diffusers import UNet3DConditionModel

    n = len(cfg.unet_channels)
    return UNet3DConditionModel(
        sample_size=cfg.size // 4, in_channels=4, out_channels=4, block_out_channels=cfg.unet_channels,
        down_block_types=("CrossAttnDownBlock3D",) * (n - 1) + ("DownBlock3D",),
        up_block_types=("UpBlock3D",) + ("CrossAttnUpBlock3D",) * (n - 1),
        layers_per_block=cfg.unet_layers, norm_num_groups=16, cross_attention_dim=cfg.text_hidden, attention_head_dim=8)


# ------------------------------------------------------------------------------------------------- utilities

class Log:
    """Appends one JSON line per record to `log.jsonl` in the work folder."""

    def __init__(self, path: Path):
        self.path = path

    def __call__(self, **record):
        record["time"] = round(time.time(), 1)
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")


def save_atomic(obj, path: Path) -> None:
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def lr_at(step: int, total: int, base: float, warmup: int) -> float:
    """Linear warm-up, then cosine decay to 5% of the base rate."""
    if step < warmup:
        return base * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return base * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress)))


def to_unit(frames_uint8: torch.Tensor) -> torch.Tensor:
    """(..., H, W, 3) uint8 -> (..., 3, H, W) float in [-1, 1]."""
    return frames_uint8.movedim(-1, -3).float().div(127.5).sub(1.0)


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """PSNR in dB of two batches in [-1, 1] (peak-to-peak 2)."""
    mse = F.mse_loss(a.clamp(-1, 1), b.clamp(-1, 1)).item()
    return 10 * math.log10(4.0 / max(mse, 1e-12))


# ----------------------------------------------------------------------------------------------------- stages

def stage_data(cfg: TrainConfig, work: Path) -> None:
    path = work / "data.npz"
    if path.exists():
        return
    logger.info("rendering %d clips of %d frames at %dx%d", cfg.clips, cfg.frames, cfg.size, cfg.size)
    data = world.make_dataset(cfg.clips, seed=cfg.seed, size=cfg.size, frames=cfg.frames, progress=True,
                              texture_prob=cfg.texture_prob, light=cfg.light, position_prob=cfg.position_prob)
    with atomic_path(path) as tmp:
        np.savez(tmp, frames=data["frames"], captions=np.array(data["captions"]))


def load_frames(work: Path) -> tuple[np.ndarray, list[str]]:
    with np.load(work / "data.npz") as z:
        return z["frames"], [str(c) for c in z["captions"]]


def _load(path: Path):
    return torch.load(path, weights_only=False, map_location="cpu")


def _autocast(device: torch.device):
    """bf16 mixed precision on CUDA; nothing elsewhere (CPU autocast is slower than fp32 for these models)."""
    import contextlib
    return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext()


def vae_done(cfg: TrainConfig, work: Path) -> bool:
    """Whether `work/vae.pt` has reached `vae_steps` (then the stage loads nothing)."""
    path = work / "vae.pt"
    return path.exists() and _load(path)["step"] >= cfg.vae_steps


def train_vae(cfg: TrainConfig, work: Path, log: Log, device: torch.device, vae, step_loss, held_out_psnr) -> None:
    """The VAE stage of either family: AdamW, warm-up and cosine over `vae_steps`, resumable from `work/vae.pt`
    (weights, optimiser, generator, step), a checkpoint every `checkpoint_minutes` and a log line with the
    held-out PSNR every 500 steps.

    `step_loss(vae, gen, device)` draws a batch from `gen` and returns (loss to minimise, {name: float} for the
    log, of which "psnr" is the batch's, for the progress bar); `held_out_psnr(vae)` the held-out PSNR in dB.
    """
    path = work / "vae.pt"
    state = _load(path) if path.exists() else None
    step = 0
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    if state is not None:
        vae.load_state_dict(state["model"])
    vae.to(device)
    opt = torch.optim.AdamW(vae.parameters(), lr=cfg.vae_lr, weight_decay=0.0)
    if state is not None:
        if "opt" in state:                                   # absent when seeded from an export
            opt.load_state_dict(state["opt"])
            gen.set_state(state["gen"])
        step = state["step"]
    vae.train()
    last_save = time.time()
    bar = tqdm(total=cfg.vae_steps, initial=step, desc="vae", dynamic_ncols=True)
    while step < cfg.vae_steps:
        for g in opt.param_groups:
            g["lr"] = lr_at(step, cfg.vae_steps, cfg.vae_lr, 100)
        loss, record = step_loss(vae, gen, device)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        step += 1
        bar.update(1)
        if step % 50 == 0:
            bar.set_postfix(loss=f"{record['loss']:.4f}", psnr=f"{record['psnr']:.1f}")
        if step % 500 == 0 or step == cfg.vae_steps:
            vae.eval()
            with torch.no_grad():
                held = held_out_psnr(vae)
            vae.train()
            log(stage="vae", step=step, **{k: v for k, v in record.items() if k != "psnr"}, psnr_held_out=held)
        if time.time() - last_save > cfg.checkpoint_minutes * 60 or step == cfg.vae_steps:
            save_atomic({"model": vae.state_dict(), "opt": opt.state_dict(), "step": step,
                         "gen": gen.get_state()}, path)
            last_save = time.time()
    bar.close()


def stage_vae(cfg: TrainConfig, work: Path, log: Log, device: torch.device = torch.device("cpu")) -> None:
    """`AutoencoderKL` on single frames, `vae_batch` a step; held out: the last frames of the data set."""
    if vae_done(cfg, work):
        return
    frames, _ = load_frames(work)
    flat = torch.from_numpy(frames.reshape(-1, cfg.size, cfg.size, 3))      # (N*F, H, W, 3) uint8
    n_held = min(2048, len(flat) // 10)                                     # the last frames, never trained on
    held_out = flat[len(flat) - n_held:]
    flat = flat[:len(flat) - n_held]

    def step_loss(vae, gen, device):
        idx = torch.randint(len(flat), (cfg.vae_batch,), generator=gen)
        x = to_unit(flat[idx]).to(device)
        with _autocast(device):
            posterior = vae.encode(x).latent_dist
            z = posterior.mean + posterior.std * torch.randn(posterior.mean.shape, generator=gen).to(device)
            rec = vae.decode(z).sample.float()
        rec_loss = F.mse_loss(rec, x) + 0.5 * F.l1_loss(rec, x)
        kl = posterior.kl().float().mean() / x[0].numel()
        return rec_loss + cfg.vae_kl * kl, {"loss": rec_loss.item(), "kl": kl.item(), "psnr": psnr(rec.detach(), x)}

    def held_out_psnr(vae):
        x = to_unit(held_out[:512])
        if len(x) == 0:
            x = to_unit(flat[:8])
        x = x.to(device)
        return psnr(vae.decode(vae.encode(x).latent_dist.mean).sample, x)

    train_vae(cfg, work, log, device, build_vae(cfg), step_loss, held_out_psnr)


def load_vae(cfg: TrainConfig, work: Path):
    vae = build_vae(cfg)
    vae.load_state_dict(_load(work / "vae.pt")["model"])
    return vae.eval().requires_grad_(False)


def encode_clips(frames: np.ndarray, batch: int, encode) -> torch.Tensor:
    """`encode` (clips (b, F, H, W, 3) uint8 -> their latents (b, C, F, h, w)) over every clip of `frames`,
    `batch` at a time, without gradients; the latents concatenated, on the CPU."""
    with torch.no_grad():
        return torch.cat([encode(torch.from_numpy(frames[i:i + batch])).cpu()
                          for i in tqdm(range(0, len(frames), batch), desc="encode", dynamic_ncols=True)])


def normalise_per_channel(raw: torch.Tensor) -> tuple[torch.Tensor, list[float], list[float]]:
    """(raw - mean) / std per channel of latents (N, C, ...), with the means and standard deviations (the
    `latents_mean` / `latents_std` of diffusers' VAE configs)."""
    dims = [d for d in range(raw.ndim) if d != 1]
    mean, std = raw.mean(dim=dims), raw.std(dim=dims)
    shape = (1, -1) + (1,) * (raw.ndim - 2)
    return (raw - mean.view(shape)) / std.view(shape), mean.tolist(), std.tolist()


def stage_encode(cfg: TrainConfig, work: Path, device: torch.device = torch.device("cpu")) -> None:
    path = work / "latents.pt"
    if path.exists():
        return
    frames, captions = load_frames(work)
    vae = load_vae(cfg, work).to(device)

    def encode(clips):                                                    # fp32 posterior means: the cache is exact
        z = vae.encode(to_unit(clips.flatten(0, 1)).to(device)).latent_dist.mean      # (b*F, C, h, w)
        return z.unflatten(0, (-1, cfg.frames)).transpose(1, 2)                       # (b, C, F, h, w)
    latents = encode_clips(frames, 64, encode)
    scaling = 1.0 / latents.std().item()
    save_atomic({"latents": latents * scaling, "captions": captions, "scaling_factor": scaling}, path)


def load_latents(cfg: TrainConfig, work: Path) -> tuple[torch.Tensor, list[str], dict]:
    """The cached latents normalised as `cfg.latent_norm` says, their captions, and the VAE config entries that
    reproduce the normalisation at inference (`scaling_factor`, and `latents_mean` / `latents_std` per channel)."""
    cached = _load(work / "latents.pt")
    latents, scaling = cached["latents"], cached["scaling_factor"]     # latents.pt holds posterior mean x scaling
    if cfg.latent_norm == "global":
        return latents, cached["captions"], {"scaling_factor": scaling}
    latents, mean, std = normalise_per_channel(latents / scaling)
    return latents, cached["captions"], {"scaling_factor": 1.0, "latents_mean": mean, "latents_std": std}


def is_image_step(cfg: TrainConfig, step: int) -> bool:
    """Single frames for the first `image_steps`, then every `image_every`-th step (if set) among the clips."""
    if step < cfg.image_steps:
        return True
    return cfg.image_every > 0 and (step - cfg.image_steps) % cfg.image_every == cfg.image_every - 1


def unet_lr(cfg: TrainConfig, step: int) -> float:
    """The UNet's learning rate: warm-up and cosine from `schedule_from` (a continuation's own) to the last step."""
    total = cfg.image_steps + cfg.video_steps
    return lr_at(step - cfg.schedule_from, total - cfg.schedule_from, cfg.lr, cfg.warmup)


def ddpm_objective(cfg: TrainConfig):
    """The UNet family's step loss for `train_denoiser`: epsilon prediction on ZeroScope's noise schedule,
    min-SNR weighted; draws the timesteps, then the noise, from the loop's generator."""
    from diffusers import DDPMScheduler

    noise = DDPMScheduler(**{k: v for k, v in SCHEDULER_CONFIG.items()
                             if k not in ("set_alpha_to_one", "steps_offset")})
    alphas = noise.alphas_cumprod
    snr = alphas / (1 - alphas)
    weight = torch.clamp(snr, max=cfg.min_snr_gamma) / snr                    # min-SNR weighting, epsilon target

    def objective(unet, text, x0, tokens, gen, device):
        t = torch.randint(0, noise.config.num_train_timesteps, (len(x0),), generator=gen)
        eps = torch.randn(x0.shape, generator=gen)
        xt = noise.add_noise(x0, eps, t)
        xt, eps, t, ids = xt.to(device), eps.to(device), t.to(device), tokens["input_ids"].to(device)
        with _autocast(device):
            cond = text(ids).last_hidden_state
            pred = unet(xt, t, encoder_hidden_states=cond).sample.float()
        per_sample = (pred - eps).pow(2).mean(dim=(1, 2, 3, 4))
        return (per_sample * weight.to(device)[t]).mean()
    return objective


def denoiser_done(cfg: TrainConfig, work: Path, name: str) -> bool:
    """Whether `work/{name}.pt` has reached the last step (then the stage loads nothing)."""
    path = work / f"{name}.pt"
    return path.exists() and _load(path)["step"] >= cfg.image_steps + cfg.video_steps


def train_denoiser(cfg: TrainConfig, work: Path, log: Log, device: torch.device, *, name: str, model, text,
                   latents: torch.Tensor, tokens: dict[str, torch.Tensor], empty: dict[str, torch.Tensor],
                   objective) -> None:
    """The denoiser stage of either family: `model` (the UNet or the transformer) and the text encoder trained
    jointly on the cached `latents` (N, C, F, h, w), single frames first, then clips (`is_image_step`); AdamW
    with warm-up and cosine (`unet_lr`), an exponential moving average of the weights, resumable from
    `work/{name}.pt` (weights under `name` and "text", the average, the optimiser, the generator, the step).

    `tokens`: the captions' tokenizer output, {key: (N, T)}; `empty`: that of the empty prompt, {key: (1, T)},
    which replaces a caption with probability `caption_dropout`. `objective(model, text, x0, tokens, gen,
    device)` returns the batch's loss, drawing its noise from `gen` after the batch's draws.
    """
    path = work / f"{name}.pt"
    total = cfg.image_steps + cfg.video_steps
    state = _load(path) if path.exists() else None
    if state is not None and state["step"] >= total:
        return
    gen = torch.Generator().manual_seed(cfg.seed + 2)
    step = 0
    if state is not None:
        model.load_state_dict(state[name])
        text.load_state_dict(state["text"])
    model.to(device)
    text.to(device)
    params = list(model.parameters()) + list(text.parameters())
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=1e-4)
    ema = [p.detach().clone() for p in params]
    if state is not None:
        if "opt" in state:                                   # absent when seeded from an export
            opt.load_state_dict(state["opt"])
            gen.set_state(state["gen"])
        ema = [e.to(device) for e in state["ema"]]
        step = state["step"]
    model.train()
    text.train()
    last_save = time.time()
    bar = tqdm(total=total, initial=step, desc=name, dynamic_ncols=True)
    n = len(latents)
    recent: dict[str, list[float]] = {"image": [], "video": []}          # losses since the last log line
    while step < total:
        image_phase = is_image_step(cfg, step)
        for g in opt.param_groups:
            g["lr"] = unet_lr(cfg, step)
        if image_phase:                                                       # single frames: (B, C, 1, h, w)
            clip = torch.randint(n, (cfg.image_batch,), generator=gen)
            frame = torch.randint(cfg.frames, (cfg.image_batch,), generator=gen)
            x0 = latents[clip, :, frame].unsqueeze(2)
        else:
            clip = torch.randint(n, (cfg.video_batch,), generator=gen)
            x0 = latents[clip]
        batch_tokens = {k: v[clip].clone() for k, v in tokens.items()}
        drop = torch.rand(len(clip), generator=gen) < cfg.caption_dropout
        for k, v in batch_tokens.items():
            v[drop] = empty[k]
        loss = objective(model, text, x0, batch_tokens, gen, device)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        step += 1
        decay = min(cfg.ema, (1 + step) / (10 + step))
        with torch.no_grad():
            torch._foreach_lerp_(ema, [p.detach() for p in params], 1 - decay)
        bar.update(1)
        phase = "image" if image_phase else "video"
        recent[phase].append(loss.item())
        if step % 20 == 0:
            bar.set_postfix(loss=f"{loss.item():.4f}", phase=phase)
        if step % 100 == 0:
            means = {f"{k}_loss_mean": sum(v) / len(v) for k, v in recent.items() if v}
            log(stage=name, step=step, phase=phase, loss=loss.item(), lr=opt.param_groups[0]["lr"], **means)
            recent = {"image": [], "video": []}
        if time.time() - last_save > cfg.checkpoint_minutes * 60 or step == total or step == cfg.image_steps:
            save_atomic({name: model.state_dict(), "text": text.state_dict(), "opt": opt.state_dict(),
                         "ema": ema, "gen": gen.get_state(), "step": step}, path)
            last_save = time.time()
    bar.close()


def stage_unet(cfg: TrainConfig, work: Path, log: Log, device: torch.device = torch.device("cpu")) -> None:
    from transformers import CLIPTokenizer

    if denoiser_done(cfg, work, "unet"):
        return
    tokenizer = CLIPTokenizer.from_pretrained(work / "tokenizer")
    latents, captions, _ = load_latents(cfg, work)                     # (N, C, F, h, w)
    ids = tokenizer(captions, padding="max_length", max_length=cfg.max_tokens, truncation=True,
                    return_tensors="pt").input_ids                       # (N, T)
    empty_ids = tokenizer([""], padding="max_length", max_length=cfg.max_tokens, return_tensors="pt").input_ids
    train_denoiser(cfg, work, log, device, name="unet", model=build_unet(cfg),
                   text=build_text_encoder(cfg, len(tokenizer)), latents=latents, tokens={"input_ids": ids},
                   empty={"input_ids": empty_ids}, objective=ddpm_objective(cfg))


def seed_from_export(cfg: TrainConfig, work: Path, source: Path) -> None:
    """Starts a work folder from an exported model (e.g. the shipped one) instead of from scratch: its VAE is
    taken as trained (or, when the export was trained at another frame size than `cfg.size`, as the start of
    `cfg.vae_steps` fine-tuning steps at the new size), its UNet and text encoder (and their moving average)
    as the state after the steps it records, without optimiser moments. Every network here is convolutional
    or attends over positions, so the weights run at any size. Lets training continue on a machine that kept
    no checkpoints, and a larger model start from a smaller one. Where the world has words the export's
    tokenizer lacks (a newer world version's), the tokenizer is built again and `carry_embeddings` keeps the
    known words' embeddings."""
    import shutil

    from diffusers import AutoencoderKL, UNet3DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    if (work / "unet.pt").exists() or (work / "vae.pt").exists():
        raise ConfigError(f"{work} already holds checkpoints; --init-from needs an empty work folder")
    recorded = json.loads((source / "motiontransfer.json").read_text())
    steps = recorded["trained_steps"]
    old_tokenizer = CLIPTokenizer.from_pretrained(source / "tokenizer")
    missing = sorted(set(world.vocabulary()) - set(known_words(old_tokenizer)))
    if missing:         # a newer world's words: a tokenizer for all of them, the known words' embeddings carried
        new_vocab = build_tokenizer(work / "tokenizer", cfg.max_tokens).get_vocab()
        logger.info("%s's tokenizer lacks the world's words %s: a new tokenizer, the known words' embeddings kept",
                    source, ", ".join(missing))
    else:
        shutil.copytree(source / "tokenizer", work / "tokenizer", dirs_exist_ok=True)
    vae = AutoencoderKL.from_pretrained(source, subfolder="vae", torch_dtype=torch.float32)
    vae_step = cfg.vae_steps if recorded.get("width", cfg.size) == cfg.size else 0
    save_atomic({"model": vae.state_dict(), "step": vae_step, "seeded_from": str(source)}, work / "vae.pt")
    unet = UNet3DConditionModel.from_pretrained(source, subfolder="unet", torch_dtype=torch.float32)
    text = CLIPTextModel.from_pretrained(source, subfolder="text_encoder", dtype=torch.float32)
    if missing:
        text = carry_embeddings(cfg, text, old_tokenizer.get_vocab(), new_vocab)
    params = [p.detach().clone() for p in list(unet.parameters()) + list(text.parameters())]
    save_atomic({"unet": unet.state_dict(), "text": text.state_dict(), "ema": params, "step": steps,
                 "seeded_from": str(source)}, work / "unet.pt")


def export(cfg: TrainConfig, work: Path, out: Path, *, dtype=torch.float16) -> None:
    """Writes the EMA weights as a diffusers-format folder (the layout of cerspense/zeroscope_v2_576w)."""
    from diffusers import DDIMScheduler
    from transformers import CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(work / "tokenizer")
    state = _load(work / "unet.pt")
    unet = build_unet(cfg)
    text = build_text_encoder(cfg, len(tokenizer))
    params = list(unet.parameters()) + list(text.parameters())
    with torch.no_grad():
        for p, e in zip(params, state["ema"]):
            p.copy_(e)
    vae = load_vae(cfg, work)
    vae.register_to_config(**load_latents(cfg, work)[2])
    with atomic_path(out, keep_suffix=False) as tmp:
        tmp.mkdir(parents=True)
        unet.to(dtype).save_pretrained(tmp / "unet", safe_serialization=True)
        vae.to(dtype).save_pretrained(tmp / "vae", safe_serialization=True)
        text.to(dtype).save_pretrained(tmp / "text_encoder", safe_serialization=True)
        tokenizer.save_pretrained(tmp / "tokenizer")
        for name in ("vocab.json", "merges.txt"):
            (tmp / "tokenizer" / name).write_bytes((work / "tokenizer" / name).read_bytes())
        DDIMScheduler(**SCHEDULER_CONFIG).save_pretrained(tmp / "scheduler")
        (tmp / "model_index.json").write_text(json.dumps({
            "_class_name": "TextToVideoSDPipeline", "_diffusers_version": "0.42.1",
            "scheduler": ["diffusers", "DDIMScheduler"], "text_encoder": ["transformers", "CLIPTextModel"],
            "tokenizer": ["transformers", "CLIPTokenizer"], "unet": ["diffusers", "UNet3DConditionModel"],
            "vae": ["diffusers", "AutoencoderKL"]}, indent=2))
        (tmp / "motiontransfer.json").write_text(json.dumps({
            "width": cfg.size, "height": cfg.size, "frames": cfg.frames, "fps": 8.0, "negative_prompt": "",
            # benchmarks/init_sweep.py: on this small model the unfiltered inverted latent follows the source's
            # motion far better than LF init (Eq. 4), at the same colour and shape rates
            "method_defaults": {"init": "inverted"},
            "vocabulary": known_words(tokenizer),    # prompts with other words get a warning (models.check_words)
            "trained_steps": state["step"], "train_config": asdict(cfg)}, indent=2))
    logger.info("exported step %d to %s", state["step"], out)


DEFAULT_WORK = Path("checkpoints/shapes")
DEFAULT_EXPORT = Path("src/motiontransfer/shapes/weights/model")    # the shipped model, in a checkout
LATENT_NORMS = ("global", "channel")
FAMILIES = ("unet", "wan")
UNET_ONLY = ("vae_channels", "latent_norm", "unet_channels", "unet_layers", "min_snr_gamma")
# A fresh Wan-family work folder starts from these instead of the UNet family's defaults (set fields win): 17
# frames (the Wan VAE encodes 4k+1), and the stage plan of training/README.md
FAMILY_DEFAULTS = {
    "unet": {},
    "wan": {"frames": 17, "clips": 20_000, "vae_steps": 5_000, "vae_batch": 16, "vae_lr": 1e-3,
            "image_steps": 1_500, "image_batch": 32, "video_steps": 16_000, "video_batch": 8, "image_every": 4,
            "lr": 3e-4, "warmup": 200, "ema": 0.999, "checkpoint_minutes": 5.0},
}


def _check_family(cfg: TrainConfig, overrides: dict[str, str]) -> None:
    if cfg.family not in FAMILIES:
        raise ConfigError(f"family must be one of {', '.join(FAMILIES)}, got {cfg.family!r}")
    other = [k for k in overrides if (k.startswith("wan_") if cfg.family == "unet" else k in UNET_ONLY)]
    if other:
        raise ConfigError(f"{', '.join(other)}: not a setting of the {cfg.family} family")
    if cfg.family == "wan" and (cfg.frames - 1) % 4:
        raise ConfigError(f"the Wan VAE encodes 4k+1 frames; frames={cfg.frames} (try {(cfg.frames - 1) // 4 * 4 + 1}"
                          f" or {(cfg.frames - 1) // 4 * 4 + 5})")
    if cfg.family == "wan" and ((cfg.wan_vae_clip_frames - 1) % 4 or cfg.wan_vae_clip_frames > cfg.frames):
        raise ConfigError(f"wan_vae_clip_frames must be 4k+1 and at most frames, got {cfg.wan_vae_clip_frames}")


def train_config(work: Path, overrides: dict[str, str] | None = None) -> TrainConfig:
    """The work folder's config (its config.json, else the defaults) with `overrides` applied: field name -> the
    value as text (JSON, except for text fields). Checked here, before any stage runs."""
    saved = work / "config.json"
    overrides = overrides or {}
    if saved.exists():
        base = TrainConfig(**{k: tuple(v) if isinstance(v, list) else v
                              for k, v in json.loads(saved.read_text()).items()})
        if overrides.get("family", base.family) != base.family:
            raise ConfigError(f"{work} holds a {base.family}-family run; a {overrides['family']}-family run needs "
                              "a work folder of its own")
    else:                                     # a fresh folder: the family's defaults
        family = overrides.get("family", TrainConfig.family)
        base = TrainConfig(family=family, **FAMILY_DEFAULTS.get(family, {}))
    fields = asdict(base)
    for k, v in overrides.items():
        if k not in fields:
            raise ConfigError(f"unknown TrainConfig field {k!r}")
        fields[k] = type(fields[k])(json.loads(v)) if not isinstance(fields[k], str) else v
    cfg = TrainConfig(**fields)
    _check_family(cfg, overrides)
    if cfg.latent_norm not in LATENT_NORMS:       # before any stage runs, not after the VAE's half hour
        raise ConfigError(f"latent_norm must be 'global' or 'channel', got {cfg.latent_norm!r}")
    return cfg
