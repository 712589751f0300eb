"""GPU memory of a run, counted without the weights: byte counts of a run made on the meta device.

The `estimate_*` functions run the package's own code (the backbone's `features`, `predict`, `encode_prompts`,
`encode_frames`, `decode_latents`; `losses.motion_loss`, `sampling.optimise_latent`, the options of
`activations`) on components built on the meta device (`tools.meta`: ZeroScope's UNet3D, Wan2.1's DiT, or any
model of either family given by its configs), which have shapes and dtypes but no data, and count bytes with:

    SavedTensorCounter  the bytes autograd saves for backward (a pack hook; each storage counted once)
    LiveBytes           a TorchDispatchMode that adds every storage an op makes and subtracts it when it is freed
                        (a finalizer on the storage): the live bytes over time and their peak
    fused_attention     a TorchFunctionMode standing in for a fused SDPA kernel (flash or memory-efficient), which
                        the meta device does not have: it keeps q, k, v, the output and the fp32 log-sum-exp for
                        backward, and never the attention matrix

docs/memory.md has the numbers at ZeroScope and Wan2.1-1.3B scale, how they were checked, and what they leave out.
"""

from __future__ import annotations

import contextlib
import functools
import math
import weakref
from typing import Any, Callable, Iterable, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

from ..activations import checkpoint_blocks, iter_tensors, offload_activations, saved_alias, storage_of
from ..backbones.base import Backbone
from ..config import ACTIVATION_MODES, DEFAULT_LAYERS
from ..errors import ConfigError
from ..features import FeatureHooks
from ..losses import motion_loss
from ..sampling import GuidedStep, optimise_latent
from . import zeroscope
from .meta import ModelSpec, cpu_backbone, latent_shape, meta_backbone, meta_model, text_width, unet3d_spec

# sdpa-fused: diffusers' default AttnProcessor2_0 with the kernel PyTorch picks on a CUDA GPU in fp16 (flash, or
# memory-efficient before Ampere); sdpa-math: the same processor on SDPA's math fallback (what the meta device
# runs; it upcasts fp16 to fp32); plain: diffusers' AttnProcessor, which materialises the attention matrix.
ATTENTION_BACKENDS = ("sdpa-fused", "sdpa-math", "plain")
GIB = 2 ** 30

KEPT_LATENTS = 21                    # inverted latents kept on the device: the 20 guided steps and the first


def parameter_bytes(*modules: nn.Module) -> int:
    """Bytes of the parameters and buffers, each storage once."""
    seen = {}
    for module in modules:
        for t in (*module.parameters(), *module.buffers()):
            seen.setdefault(id(storage_of(t)), storage_of(t).nbytes())
    return sum(seen.values())


# ----------------------------------------------------------------------------------------------- counting

class SavedTensorCounter:
    """Context manager: counts the bytes autograd saves for backward while it is open (the tensors are saved as
    usual). Each storage counts once, whole (a saved view keeps all of its storage alive); storages of `exclude`
    (the parameters, counted as weights) do not count. Inner `saved_tensors_hooks` (checkpointing, offload) hide
    what they pack from it."""

    def __init__(self, exclude: Iterable[torch.Tensor] = (), label: Callable[[], str] | None = None):
        self._exclude = {id(storage_of(t)): storage_of(t) for t in exclude}
        self._seen: weakref.WeakValueDictionary = weakref.WeakValueDictionary()
        self._label = label
        self._hooks = None
        self.bytes = 0             # distinct storages saved, excluded ones left out
        self.tensors = 0           # saved tensors, all of them
        self.by_label: dict[str, int] = {}     # bytes by what `label()` said when each storage was first saved

    def __enter__(self) -> "SavedTensorCounter":
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t)
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._hooks.__exit__(*exc)
        self._seen = weakref.WeakValueDictionary()

    def _pack(self, tensor: torch.Tensor) -> torch.Tensor:
        storage = storage_of(tensor)
        self.tensors += 1
        if id(storage) not in self._exclude and id(storage) not in self._seen:
            self._seen[id(storage)] = storage
            self.bytes += storage.nbytes()
            if self._label is not None:
                label = self._label()
                self.by_label[label] = self.by_label.get(label, 0) + storage.nbytes()
        return saved_alias(tensor)


class LiveBytes(TorchDispatchMode):
    """Tracks the bytes of the storages that ops make on `device` while the mode is on.

    A storage an op returns that none of its inputs had is new: its bytes are added, and subtracted by a
    finalizer when it is freed. `current` is what is live now, `peak` the most so far. Storages made before the
    mode (parameters, inputs) do not count; count them separately. On the meta device, copies to another
    device return uninitialised tensors there, and reads of a value return 0, so code that reads results
    (`decode_latents`, a loss logged with `float`) runs unchanged.
    """

    def __init__(self, device: str | torch.device = "meta"):
        super().__init__()
        self.device_type = torch.device(device).type
        self.current = 0
        self.peak = 0
        self._live: dict[int, int] = {}
        self._paused = 0

    def reset_peak(self) -> None:
        self.peak = self.current

    @contextlib.contextmanager
    def untracked(self) -> Iterator[None]:
        """Ops inside make storages that do not count (a stand-in for memory elsewhere)."""
        self._paused += 1
        try:
            yield
        finally:
            self._paused -= 1

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if self.device_type == "meta":
            if func is torch.ops.aten._local_scalar_dense.default and args[0].is_meta:
                return {torch.bool: False}.get(args[0].dtype, 0.0 if args[0].is_floating_point() else 0)
            if func is torch.ops.aten._to_copy.default and args[0].is_meta and kwargs.get("device") is not None \
                    and torch.device(kwargs["device"]).type != "meta":
                return torch.empty(args[0].shape, dtype=kwargs.get("dtype") or args[0].dtype, device=kwargs["device"])
        out = func(*args, **kwargs)
        if not self._paused:
            inputs = {id(storage_of(t)) for t in iter_tensors((args, kwargs)) if t.layout == torch.strided}
            for t in iter_tensors(out):
                if t.device.type == self.device_type and t.layout == torch.strided:
                    storage = storage_of(t)
                    if id(storage) not in inputs and id(storage) not in self._live:
                        self._add(storage)
        return out

    def _add(self, storage: torch.UntypedStorage) -> None:
        key, size = id(storage), storage.nbytes()
        self._live[key] = size
        self.current += size
        self.peak = max(self.peak, self.current)
        weakref.finalize(storage, self._free, key)

    def _free(self, key: int) -> None:
        self.current -= self._live.pop(key)


def cpu_allocator_peak(fn: Callable[[], Any]) -> int:
    """The real peak of the CPU allocator while `fn` runs, above where it started, in bytes: for checking the
    meta counts against a run that allocates. Reads the allocation events of the PyTorch profiler
    (`profile_memory=True`) through its experimental event tree; raises RuntimeError where this torch lacks it."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    try:
        allocation = torch._C._profiler._EventType.Allocation
        stack, events = list(prof.profiler.kineto_results.experimental_event_tree()), []
    except AttributeError as e:
        raise RuntimeError(f"this torch's profiler does not expose allocation events ({e})") from None
    while stack:
        event = stack.pop()
        stack.extend(event.children)
        if event.tag == allocation:
            events.append(event)
    if not events:
        return 0
    events.sort(key=lambda e: e.start_time_ns)
    start = events[0].extra_fields.total_allocated - events[0].extra_fields.alloc_size
    return max(e.extra_fields.total_allocated for e in events) - start


class _FusedAttention(torch.autograd.Function):
    """The memory of a fused SDPA kernel (flash attention 2 as PyTorch ships it; the memory-efficient kernel
    differs by rounding the log-sum-exp up to 32 rows). Forward: the output (B, H, N, Dv) and the fp32
    log-sum-exp (B, H, N); it saves q, k, v, the output and the log-sum-exp. Backward: dq, dk, dv, plus the fp32
    dq accumulator and row sums it frees before returning. Values are not computed."""

    @staticmethod
    def forward(ctx, query, key, value):
        out = query.new_empty((*query.shape[:-1], value.shape[-1]))
        logsumexp = query.new_empty(query.shape[:-1], dtype=torch.float32)
        ctx.save_for_backward(query, key, value, out, logsumexp)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        query, key, value, out, logsumexp = ctx.saved_tensors
        workspace = (torch.empty_like(logsumexp), query.new_empty(query.shape, dtype=torch.float32))
        grads = torch.empty_like(query), torch.empty_like(key), torch.empty_like(value)
        del workspace
        return grads


class fused_attention(TorchFunctionMode):
    """Runs `F.scaled_dot_product_attention` calls without mask, dropout, causality or grouped heads as
    `_FusedAttention` (on the meta device, which otherwise takes SDPA's math path); q, k, v positional (diffusers'
    `AttnProcessor2_0`) or by name (its `dispatch_attention_fn`, which Wan's `WanAttnProcessor` calls), any
    `scale`. Others pass through."""

    QKV = ("query", "key", "value")

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.scaled_dot_product_attention and len(args) <= 3 \
                and set(self.QKV[len(args):]) <= set(kwargs) and kwargs.get("attn_mask") is None \
                and not kwargs.get("dropout_p") and not kwargs.get("is_causal") and not kwargs.get("enable_gqa"):
            qkv = (*args, *(kwargs[name] for name in self.QKV[len(args):]))
            return _FusedAttention.apply(*qkv)
        return func(*args, **kwargs)


class _SimulatedOffload(offload_activations):
    """`offload_activations` on the meta device: the host copy is an untracked stand-in, the copy back counts."""

    def __init__(self, tracker: LiveBytes, resident: Iterable[torch.Tensor]):
        super().__init__(resident=resident, pin_memory=False)
        self._tracker = tracker

    def stays(self, tensor):
        return tensor.device.type != "meta" or id(storage_of(tensor)) in self._resident

    def to_host(self, tensor):
        with self._tracker.untracked():
            return torch.empty_like(tensor)

    def to_device(self, host, device):
        return torch.empty_like(host)


# ------------------------------------------------------------------------------------------- attention

@contextlib.contextmanager
def _attention(backend: str, *modules: nn.Module | None) -> Iterator[None]:
    """Runs the block with the chosen attention backend (see ATTENTION_BACKENDS); restores the processors."""
    if backend not in ATTENTION_BACKENDS:
        raise ConfigError(f"attention must be one of {', '.join(ATTENTION_BACKENDS)}, got {backend!r}")
    if backend == "sdpa-fused":
        with fused_attention():
            yield
    elif backend == "sdpa-math":
        yield
    else:
        from diffusers.models.attention_processor import AttnProcessor

        modules = [m for m in modules if m is not None and hasattr(m, "set_attn_processor")]
        saved = [m.attn_processors for m in modules]
        try:
            for m in modules:
                m.set_attn_processor(AttnProcessor())
            yield
        finally:
            for m, processors in zip(modules, saved):
                m.set_attn_processor(processors)


def _check_attention(model: Backbone, attention: str) -> None:
    if attention == "plain" and model.family != "unet3d":
        raise ConfigError("attention 'plain' is diffusers' AttnProcessor, a UNet processor; a Wan transformer runs "
                          "only WanAttnProcessor (sdpa-fused or sdpa-math)")


def _text_states(model: Backbone, tokens: int) -> torch.Tensor:
    return torch.empty(1, tokens, text_width(model), device="meta", dtype=model.dtype)


# ------------------------------------------------------------------------------------------- estimates

def estimate_guided_iteration(unet_config: dict = zeroscope.UNET_CONFIG, frames: int = zeroscope.FRAMES,
                              height: int = zeroscope.HEIGHT, width: int = zeroscope.WIDTH,
                              dtype: torch.dtype = torch.float16, *, truncate: bool = True,
                              activations: str = "none", attention: str = "sdpa-fused", units: str = "layers",
                              layers: tuple[str, ...] = DEFAULT_LAYERS, loss: str = "pairwise_cosine",
                              timestep: int = 981, text_tokens: int = 77,
                              vae_scale: int = zeroscope.VAE_SCALE) -> dict[str, int]:
    """Bytes of one guided iteration of the UNet3D of `unet_config`: the UNet forward with gradients on the latent
    (stopped after the last hooked layer unless `truncate=False`), the motion loss against the source's SMM
    vectors, backward to the latent and the Adam update, as `sampling.optimise_latent` runs them with one
    iteration. (`estimate_run(model=...)` has the same numbers for a model of either family.)

    `height`, `width` in pixels (latent = pixels / vae_scale). `activations` as in `activation_options`.

    Returns bytes:
        weights   the UNet's parameters and buffers
        inputs    what exists before: the latent (fp32, as sampling keeps it), the text states, the source SMMs
        saved     what autograd saved for backward, each storage once, parameters left out (activations="none")
        held      live at the start of backward: saved tensors, kept block inputs, captured features
        peak      the most live at once during the iteration, beyond weights and inputs
        host      bytes moved to host memory (activations="offload")
        total     weights + inputs + peak
    """
    model = meta_model(unet_config, None, None, dtype)
    return _guided_iteration(model, frames, height, width, truncate=truncate, activations=activations,
                             attention=attention, units=units, layers=tuple(layers), loss=loss, timestep=timestep,
                             text_tokens=text_tokens, vae_scale=vae_scale)


def _guided_iteration(model: Backbone, frames: int, height: int, width: int, *, truncate: bool,
                      activations: str, attention: str, units: str, layers: tuple[str, ...], loss: str,
                      timestep: float, text_tokens: int, vae_scale: int = zeroscope.VAE_SCALE) -> dict[str, int]:
    if activations not in ACTIVATION_MODES:
        raise ConfigError(f"activations must be one of {', '.join(ACTIVATION_MODES)}, got {activations!r}")
    _check_attention(model, attention)
    denoiser = model.denoiser
    x = torch.empty(latent_shape(model, frames, height, width, vae_scale), device="meta", dtype=torch.float32)
    cond = _text_states(model, text_tokens)
    tracker = LiveBytes("meta")
    resident = [*denoiser.parameters(), *denoiser.buffers()]
    record: dict[str, int] = {}
    with FeatureHooks(denoiser, layers, stop_early=truncate) as hooks, _attention(attention, denoiser):
        with torch.no_grad():                              # the source side, reduced once per timestep
            src = {n: f.mean(dim=(-2, -1)) for n, f in model.features(hooks, x, timestep, cond).items()}
        inputs = sum(storage_of(t).nbytes() for t in (x, cond, *src.values()))
        counter = SavedTensorCounter(exclude=resident) if activations == "none" else contextlib.nullcontext()
        if activations == "checkpoint":
            option = checkpoint_blocks(denoiser, model.checkpoint_units(units),
                                       recompute_context=fused_attention if attention == "sdpa-fused"
                                       else contextlib.nullcontext)
        elif activations == "offload":
            option = _SimulatedOffload(tracker, resident)
        else:
            option = contextlib.nullcontext()

        def loss_fn(latent):
            with counter:
                value = motion_loss(loss, src, model.features(hooks, latent, timestep, cond))
            if torch.is_grad_enabled():               # not the no-grad evaluation after the last step
                record["held"] = tracker.current
            return value

        with tracker, option:
            optimise_latent(x, loss_fn, 1, 1e-3, GuidedStep(t=timestep, lr=1e-3))
    weights = parameter_bytes(denoiser)
    return {"weights": weights, "inputs": inputs,
            "saved": counter.bytes if activations == "none" else None, "held": record["held"],
            "peak": tracker.peak, "host": option.host_bytes if activations == "offload" else 0,
            "total": weights + inputs + tracker.peak}


def _run_phase(fn: Callable[[], Any], attention: str, *modules) -> int:
    """The peak bytes that `fn` makes live (beyond what existed before), under `no_grad`."""
    tracker = LiveBytes("meta")
    with _attention(attention, *modules), torch.no_grad(), tracker:
        fn()
    return tracker.peak


def estimate_unet_pass(unet_config: dict = zeroscope.UNET_CONFIG, frames: int = zeroscope.FRAMES,
                       height: int = zeroscope.HEIGHT, width: int = zeroscope.WIDTH,
                       dtype: torch.dtype = torch.float16, *, cfg: bool = True,
                       attention: str = "sdpa-fused", truncate_after: tuple[str, ...] | None = None,
                       timestep: int = 981, text_tokens: int = 77,
                       vae_scale: int = zeroscope.VAE_SCALE) -> dict[str, int]:
    """Bytes of one UNet pass without gradients, through `UNet3DBackbone.predict`: with classifier-free guidance
    (`cfg`, batch 2, as sampling runs it) or without (batch 1, as inversion runs it); or, with `truncate_after`
    (layer names), the truncated pass that computes the source features. Returns weights, peak, total."""
    model = meta_model(unet_config, None, None, dtype)
    return _denoiser_pass(model, frames, height, width, cfg=cfg, attention=attention, truncate_after=truncate_after,
                          timestep=timestep, text_tokens=text_tokens, vae_scale=vae_scale)


def _denoiser_pass(model: Backbone, frames: int, height: int, width: int, *, cfg: bool, attention: str,
                   truncate_after: tuple[str, ...] | None, timestep: float, text_tokens: int,
                   vae_scale: int = zeroscope.VAE_SCALE) -> dict[str, int]:
    """A pass of the denoiser without gradients through the backbone's `predict` (CFG as the family runs it:
    one batch of 2 on UNet3D, two calls on Wan) or `features` (`truncate_after`)."""
    _check_attention(model, attention)
    x = torch.empty(latent_shape(model, frames, height, width, vae_scale), device="meta", dtype=torch.float32)
    cond = _text_states(model, text_tokens)
    if truncate_after:
        with FeatureHooks(model.denoiser, truncate_after) as hooks:
            peak = _run_phase(lambda: {n: f.mean(dim=(-2, -1))
                                       for n, f in model.features(hooks, x, timestep, cond).items()},
                              attention, model.denoiser)
    else:
        uncond = cond if cfg else None
        peak = _run_phase(lambda: model.predict(x, timestep, cond, uncond, 10.0 if cfg else 1.0), attention,
                          model.denoiser)
    weights = parameter_bytes(model.denoiser)
    return {"weights": weights, "peak": peak, "total": weights + peak}


def estimate_vae(vae_config: dict = zeroscope.VAE_CONFIG, frames: int = zeroscope.FRAMES,
                 height: int = zeroscope.HEIGHT, width: int = zeroscope.WIDTH,
                 dtype: torch.dtype = torch.float16, *, decode: bool = True, slicing: bool = False,
                 attention: str = "sdpa-fused") -> dict[str, int]:
    """Bytes of `UNet3DBackbone.decode_latents` (or `encode_frames`) of `frames` frames, sliced (one frame at a time)
    or not. The frames (uint8) and latents come and go through the adapter as in a run. Returns weights, peak,
    total."""
    model = meta_model(zeroscope.UNET_CONFIG, vae_config, None, dtype)
    return _vae(model, frames, height, width, decode=decode, slicing=slicing, attention=attention)


def _vae(model: Backbone, frames: int, height: int, width: int, *, decode: bool, slicing: bool,
         attention: str) -> dict[str, int]:
    """`decode_latents` of the latent of `frames` frames (fp32, as sampling leaves it), or `encode_frames` of
    the frames; `slicing` is the backbone's `vae_slicing` (UNet3D: one frame at a time; Wan: spatial tiles)."""
    _check_attention(model, attention)
    previous = model.vae_slicing
    model.vae_slicing = slicing
    try:
        if decode:
            z = torch.empty(latent_shape(model, frames, height, width), device="meta", dtype=torch.float32)
            peak = _run_phase(lambda: model.decode_latents(z), attention, model.vae)
        else:
            video = np.zeros((frames, height, width, 3), np.uint8)
            peak = _run_phase(lambda: model.encode_frames(video), attention, model.vae)
    finally:
        model.vae_slicing = previous
    weights = parameter_bytes(model.vae)
    return {"weights": weights, "peak": peak, "total": weights + peak}


def estimate_text_encoder(text_config: dict = zeroscope.TEXT_ENCODER_CONFIG, dtype: torch.dtype = torch.float16,
                          *, tokens: int = 77) -> dict[str, int]:
    """Bytes of encoding one prompt of `tokens` tokens with this CLIP text encoder. Returns weights, peak, total."""
    return _text(meta_backbone(unet3d_spec(zeroscope.UNET_CONFIG, None, text_config, dtype, text_tokens=tokens)))


def _text(model: Backbone) -> dict[str, int]:
    """`encode_prompts` of one prompt at the padded length (the meta tokenizer's)."""
    peak = _run_phase(lambda: model.encode_prompts([""]), "sdpa-math")
    weights = parameter_bytes(model.text_encoder)
    return {"weights": weights, "peak": peak, "total": weights + peak}


PHASES = ("text", "encode", "inversion", "source", "guidance", "sampling", "decode")
PLAIN_PHASES = ("text", "sampling", "decode")          # text-to-video: no source, no guidance


@functools.lru_cache(maxsize=256)
def _phase(name: str, spec: ModelSpec, frames: int, height: int, width: int, options: tuple) -> dict[str, Any]:
    """One phase of a run: its component, the component's weight bytes, the phase's peak activation bytes, and
    for guidance the graph's bytes at backward and the bytes offloaded to the host."""
    o = dict(options)
    model = meta_backbone(spec)
    size = dict(frames=frames, height=height, width=width)
    layers = o["layers"] or model.default_layers
    out = {"held": None, "host": 0}
    if name == "text":
        r = _text(model)
        return {**out, "component": "text_encoder", "component_weights": r["weights"], "activations": r["peak"]}
    if name in ("encode", "decode"):
        r = _vae(model, **size, decode=name == "decode", slicing=o["vae_slicing"], attention=o["attention"])
        return {**out, "component": "vae", "component_weights": r["weights"], "activations": r["peak"]}
    common = dict(attention=o["attention"], timestep=981, text_tokens=spec.text_tokens)
    if name == "guidance":
        r = _guided_iteration(model, **size, truncate=o["truncate"], activations=o["activations"], units=o["units"],
                              layers=layers, loss="pairwise_cosine", **common)
        return {"component": "denoiser", "component_weights": r["weights"], "activations": r["inputs"] + r["peak"],
                "held": r["held"], "host": r["host"]}
    if name == "source":
        r = _denoiser_pass(model, **size, cfg=False, truncate_after=layers, **common)
    else:
        r = _denoiser_pass(model, **size, cfg=name == "sampling", truncate_after=None, **common)
    return {**out, "component": "denoiser", "component_weights": r["weights"], "activations": r["peak"]}


def estimate_run(unet_config: dict = zeroscope.UNET_CONFIG, vae_config: dict = zeroscope.VAE_CONFIG,
                 text_config: dict = zeroscope.TEXT_ENCODER_CONFIG, frames: int | None = None,
                 height: int | None = None, width: int | None = None,
                 dtype: torch.dtype = torch.float16, *, model: ModelSpec | None = None, truncate: bool = True,
                 activations: str = "none", attention: str = "sdpa-fused", units: str = "layers",
                 layers: tuple[str, ...] | None = None, vae_slicing: bool = False, cpu_offload: bool = False,
                 kept_latents: int = KEPT_LATENTS, plain: bool = False) -> dict[str, Any]:
    """Device bytes of every phase of a transfer and their maximum, the run's peak.

    `model` is the model counted (`meta.ZEROSCOPE`, `meta.WAN_1_3B` or any `ModelSpec`); None: the UNet3D of
    `unet_config`, `vae_config`, `text_config` at `dtype` (ZeroScope's by default). `frames`, `height`,
    `width` (pixels) default to the model's native size; `layers` (hooked) to the family's default.

    Phases: text (encode a prompt), encode (the source frames, through the VAE), inversion (a denoiser pass,
    batch 1), source (the truncated pass for the source features), guidance (one guided iteration), sampling (a
    CFG pass: batch 2 on UNet3D, two calls on Wan), decode (the result). `plain`: text-to-video, only text,
    sampling and decode, with only the sampling latent kept. Each phase costs the weights resident during it (all
    components; with `cpu_offload`, as `BackboneBase.cpu_offload` does it, the denoiser and the running text
    encoder or VAE), the state kept across phases (`kept_latents` inverted latents in the model's dtype and the
    fp32 sampling latent) and the phase's own peak. `vae_slicing` is the backbone's (Wan: VAE tiling).

    Returns {"phases": {name: {"component", "weights", "state", "activations", "total", "held", "host"}},
    "peak", "peak_phase", "weights"} (bytes; `held` and `host` as in `estimate_guided_iteration`, guidance only).
    """
    spec = model or unet3d_spec(unet_config, vae_config, text_config, dtype)
    frames, height, width = (given or native for given, native in zip((frames, height, width), spec.size))
    options = (("truncate", truncate), ("activations", activations), ("attention", attention), ("units", units),
               ("vae_slicing", vae_slicing), ("layers", None if layers is None else tuple(layers)))
    backbone = meta_backbone(spec)
    latent = math.prod(latent_shape(backbone, frames, height, width))
    kept = 0 if plain else kept_latents
    state = kept * latent * torch.finfo(spec.dtype).bits // 8 + latent * 4     # + the fp32 sampling latent
    denoiser_weights = parameter_bytes(backbone.denoiser)
    all_weights = denoiser_weights + parameter_bytes(backbone.vae) + parameter_bytes(backbone.text_encoder)
    phases = {}
    for name in PLAIN_PHASES if plain else PHASES:
        p = _phase(name, spec, frames, height, width, options)
        # BackboneBase.cpu_offload: the denoiser stays; the text encoder and the VAE come to the device only to run
        extra = p["component_weights"] if p["component"] != "denoiser" else 0
        resident = denoiser_weights + extra if cpu_offload else all_weights
        phases[name] = {"component": p["component"], "weights": resident, "state": state,
                        "activations": p["activations"], "held": p["held"], "host": p["host"],
                        "total": resident + state + p["activations"]}
    peak_phase = max(phases, key=lambda n: phases[n]["total"])
    return {"phases": phases, "peak": phases[peak_phase]["total"], "peak_phase": peak_phase,
            "weights": all_weights}


CHECK_CASES = ("guided step", "guided step, checkpointed", "forward without grad")


def cpu_check(spec: ModelSpec, frames: int, height: int, width: int, case: str, *,
              attention: str = "sdpa-fused", seed: int = 0) -> dict[str, int | None]:
    """A small model's real CPU run against its meta count, for `case` (`CHECK_CASES`: one guided iteration's
    forward, loss and backward through the backbone's `features`, plain or checkpointed; or a `predict` pass
    without gradients), with the same attention kernel on both devices (PyTorch's CPU flash kernel and its
    stand-in for `sdpa-fused`; SDPA's math path for `sdpa-math`). Returns bytes:

        saved_cpu, saved_meta   saved for backward ("guided step" only; None otherwise)
        peak_cpu                the CPU allocator's peak (`cpu_allocator_peak`): ops and the kernels' own scratch
        peak_cpu_ops            the peak of the storages the ops return on the CPU (`LiveBytes("cpu")`)
        peak_meta               the meta count (`LiveBytes("meta")`)
    """
    from torch.nn.attention import SDPBackend, sdpa_kernel

    if case not in CHECK_CASES:
        raise ConfigError(f"case must be one of {', '.join(CHECK_CASES)}, got {case!r}")
    fused = attention == "sdpa-fused"
    out: dict[str, int | None] = {}
    for device in ("cpu", "meta"):
        model = cpu_backbone(spec, seed) if device == "cpu" else meta_backbone(spec)
        denoiser, layers = model.denoiser, model.default_layers
        g = torch.Generator().manual_seed(seed + 1)
        x = torch.randn(latent_shape(model, frames, height, width), generator=g).to(device)
        cond = torch.randn(1, spec.text_tokens, text_width(model), generator=g).to(device, model.dtype)
        counter = SavedTensorCounter(exclude=denoiser.parameters()) if case == "guided step" else None
        if device == "meta":
            kernel = fused_attention() if fused else contextlib.nullcontext()
        else:
            kernel = sdpa_kernel([SDPBackend.FLASH_ATTENTION if fused else SDPBackend.MATH])

        def run(counter=None):
            if case == "forward without grad":
                with torch.no_grad():
                    model.predict(x, 501, cond)
                return
            recompute = fused_attention if fused and device == "meta" else contextlib.nullcontext
            option = checkpoint_blocks(denoiser, model.checkpoint_units(), recompute_context=recompute) \
                if case == "guided step, checkpointed" else contextlib.nullcontext()
            latent = x.clone().requires_grad_(True)
            with FeatureHooks(denoiser, layers) as hooks, option:
                with counter or contextlib.nullcontext():
                    loss = motion_loss("pairwise_cosine", src, model.features(hooks, latent, 501, cond))
                loss.backward()

        with kernel:
            with FeatureHooks(denoiser, layers) as hooks, torch.no_grad():
                src = {n: f.mean(dim=(-2, -1)) for n, f in model.features(hooks, x, 501, cond).items()}
            if device == "cpu":
                out["peak_cpu"] = cpu_allocator_peak(run)
            tracker = LiveBytes(device)
            with tracker:
                run(counter)
            out[f"peak_{device}_ops" if device == "cpu" else "peak_meta"] = tracker.peak
        out[f"saved_{device}"] = None if counter is None else counter.bytes
    return out


__all__ = ["SavedTensorCounter", "LiveBytes", "fused_attention", "cpu_allocator_peak", "meta_model", "parameter_bytes",
           "estimate_guided_iteration", "estimate_unet_pass", "estimate_vae", "estimate_text_encoder",
           "estimate_run", "cpu_check", "ModelSpec", "ATTENTION_BACKENDS", "GIB", "PHASES", "PLAIN_PHASES",
           "CHECK_CASES"]
