"""Activation options for the guidance step: what its forward keeps for backward (GPU memory).

`activation_options(denoiser, mode, names=...)` is a context manager around the guidance step (the forward and
backward passes of `sampling.optimise_latent`):

    none        autograd keeps what each op saves for backward (the default)
    checkpoint  chosen blocks of the denoiser (`names`: a backbone's `checkpoint_units`) keep only their inputs;
                in backward each one runs its forward again, once, to rebuild what it had saved
                (`checkpoint_blocks`). The gradients are those of `none`.
    offload     tensors saved for backward move to host memory (pinned when CUDA is there) and come back when
                backward needs them; parameters and host tensors stay where they are (`offload_activations`)

Both work through `torch.autograd.graph.saved_tensors_hooks` and module hooks that are removed on exit; no
library `forward` is replaced. diffusers' own switch cannot be used: `UNet3DConditionModel` sets
`_supports_gradient_checkpointing = False`, and its 3D blocks set a `gradient_checkpointing` attribute that
their `forward` never reads (diffusers 0.42). What each option saves at ZeroScope scale: `tools.memory` and
docs/memory.md.
"""

from __future__ import annotations

import contextlib
import weakref
from functools import partial
from typing import Any, Callable, Iterable, Iterator

import torch
from torch import nn
from torch.utils.checkpoint import get_device_states, set_device_states

from .config import ACTIVATION_MODES
from .errors import ConfigError


# ------------------------------------------------------------------------------------------------ storages

def storage_of(tensor: torch.Tensor) -> torch.UntypedStorage:
    """The storage under `tensor`. PyTorch keeps one Python object per storage for as long as the storage lives,
    so its `id` names the storage and a finalizer on it runs when the memory is released."""
    return tensor.untyped_storage()


def iter_tensors(obj) -> Iterator[torch.Tensor]:
    """The tensors in nested tuples, lists and dicts."""
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, (tuple, list)):
        for item in obj:
            yield from iter_tensors(item)
    elif isinstance(obj, dict):
        for item in obj.values():
            yield from iter_tensors(item)


def saved_alias(tensor: torch.Tensor) -> torch.Tensor:
    """What a pack hook returns to keep a tensor as it is. The tensor itself would be a reference cycle when it is
    the output of the op saving it (node -> tensor -> grad_fn = node), freed only by the garbage collector; an
    alias without autograd history keeps the same storage and no cycle, as autograd's own saving does."""
    return tensor.detach()


def map_tensors(fn: Callable[[torch.Tensor], Any], obj):
    if isinstance(obj, torch.Tensor):
        return fn(obj)
    if isinstance(obj, (tuple, list)):
        return type(obj)(map_tensors(fn, item) for item in obj)
    if isinstance(obj, dict):
        return {k: map_tensors(fn, v) for k, v in obj.items()}
    return obj


# ------------------------------------------------------------------------------------ activation checkpointing

class _StopRecompute(Exception):
    """Ends a recomputation once it has rebuilt every tensor the first run saved."""


class _Handle:
    """Stands in the autograd graph for one tensor a checkpointed call saved."""

    __slots__ = ("__weakref__",)


class _Call:
    """One checkpointed call of a module: its inputs, RNG and autocast state, and one handle per saved tensor."""

    def __init__(self, module: nn.Module, args: tuple, kwargs: dict):
        self.module, self.args, self.kwargs = module, args, kwargs
        tensors = list(iter_tensors((args, kwargs)))
        self.versions = [t._version for t in tensors]
        self.device_type = next((t.device.type for t in tensors if t.device.type not in ("cpu", "meta")), None)
        self.cpu_rng = torch.get_rng_state()
        self.devices, self.device_states = get_device_states(*tensors) if self.device_type else ([], [])
        autocast_device = self.device_type or "cpu"
        self.autocast = (autocast_device, torch.is_autocast_enabled(autocast_device),
                         torch.get_autocast_dtype(autocast_device))
        self.saved: list[tuple[weakref.ref, torch.Size, torch.dtype]] = []
        self.recomputed: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()   # handle -> rebuilt tensor
        self.done = False


class BlockCheckpointing:
    """Activation checkpointing of named submodules, by hooks that are removed on exit. See `checkpoint_blocks`."""

    def __init__(self, model: nn.Module, names: Iterable[str],
                 recompute_context: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext):
        names = tuple(names)
        modules = dict(model.named_modules())
        unknown = [n for n in names if n not in modules]
        if unknown:
            raise ConfigError(f"cannot checkpoint {unknown}: no module of the model has that name")
        nested = [(a, b) for a in names for b in names if b.startswith(a + ".")]
        if nested or len(set(names)) != len(names):
            raise ConfigError(f"checkpointed modules must not repeat or nest: {nested or names}")
        self.names = names
        self._recompute_context = recompute_context
        self._modules = [modules[n] for n in names]
        self._handles = []
        self._open: list[tuple[_Call | None, Any]] = []     # calls whose forward is running, innermost last
        self._recomputing = False
        self.calls = 0              # checkpointed calls so far
        self.recomputations = 0

    def __enter__(self) -> "BlockCheckpointing":
        try:
            for module in self._modules:
                self._handles.append(module.register_forward_pre_hook(self._before, with_kwargs=True))
                self._handles.append(module.register_forward_hook(self._after, with_kwargs=True, always_call=True))
        except BaseException:
            self._remove()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self._remove()

    def _remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        while self._open:                          # a forward interrupted by something the hooks could not see
            _, hooks = self._open.pop()
            if hooks is not None:
                hooks.__exit__(None, None, None)

    # forward: keep the inputs, save handles ------------------------------------------------------------
    def _before(self, module, args, kwargs):
        if self._recomputing or not torch.is_grad_enabled():
            self._open.append((None, None))
            return None
        call = _Call(module, args, kwargs)
        hooks = torch.autograd.graph.saved_tensors_hooks(partial(self._pack, call), partial(self._unpack, call))
        hooks.__enter__()
        self._open.append((call, hooks))
        self.calls += 1
        return None

    def _after(self, module, args, kwargs, output):
        # always_call: also runs when the forward raised (features.StopForward ends a truncated pass here)
        _, hooks = self._open.pop()
        if hooks is not None:
            hooks.__exit__(None, None, None)
        return None

    @staticmethod
    def _pack(call: _Call, tensor: torch.Tensor) -> _Handle:
        handle = _Handle()
        call.saved.append((weakref.ref(handle), tensor.shape, tensor.dtype))
        return handle

    # backward: rebuild on first use ---------------------------------------------------------------------
    def _unpack(self, call: _Call, handle: _Handle) -> torch.Tensor:
        if not call.done:
            self._recompute(call)
        return call.recomputed[handle]

    def _recompute(self, call: _Call) -> None:
        name = type(call.module).__name__
        if [t._version for t in iter_tensors((call.args, call.kwargs))] != call.versions:
            raise RuntimeError(f"an input of a checkpointed {name} was modified in place after its forward; "
                               f"recomputing it would give other values")
        count = 0

        def pack(tensor):
            nonlocal count
            ref, shape, dtype = call.saved[count]
            if tensor.shape != shape or tensor.dtype != dtype:
                raise RuntimeError(f"recomputing a checkpointed {name} saved a {tuple(tensor.shape)} {tensor.dtype} "
                                   f"tensor where its forward saved {tuple(shape)} {dtype}; is it deterministic?")
            handle = ref()
            if handle is not None:                  # a handle autograd already dropped needs nothing rebuilt
                call.recomputed[handle] = tensor.detach()
            count += 1
            if count == len(call.saved):
                raise _StopRecompute
            return None

        def unpack(_):
            raise RuntimeError("a tensor saved during recomputation was used")

        args, kwargs = map_tensors(lambda t: t.detach().requires_grad_(t.requires_grad), (call.args, call.kwargs))
        device_type, autocast_enabled, autocast_dtype = call.autocast
        # fork_rng's own default device type; None fails in torch 2.11 on a machine with CUDA
        rng = torch.random.fork_rng(devices=call.devices, device_type=call.device_type or "cuda")
        with rng, torch.enable_grad(), torch.autocast(device_type, autocast_dtype, autocast_enabled), \
                self._recompute_context(), torch.autograd.graph.saved_tensors_hooks(pack, unpack):
            torch.set_rng_state(call.cpu_rng)
            if call.devices:
                set_device_states(call.devices, call.device_states, device_type=call.device_type)
            self._recomputing = True
            try:
                call.module(*args, **kwargs)
            except _StopRecompute:
                pass
            finally:
                self._recomputing = False
        if count < len(call.saved):
            raise RuntimeError(f"recomputing a checkpointed {name} saved {count} tensors, its forward "
                               f"{len(call.saved)}; is it deterministic?")
        call.done = True
        call.args = call.kwargs = None               # the rebuilt tensors hold what is still needed
        self.recomputations += 1


def checkpoint_blocks(model: nn.Module, names: Iterable[str], *,
                      recompute_context: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext
                      ) -> BlockCheckpointing:
    """Context manager: activation checkpointing of the submodules `names` of `model` while it is open.

    A call of a named module with gradients on keeps its inputs and, in place of each tensor it saves for
    backward, a handle. The first time backward needs one of them, the module runs its forward again on the kept
    inputs (same RNG and autocast state) until it has rebuilt as many saved tensors as its first run made; each
    rebuilt tensor is freed when autograd drops its handle. The graph is the original one, so the gradients are
    those without checkpointing, provided the module is deterministic given its RNG state (checked by shapes)
    and its inputs are not modified in place before backward (checked: an error, not a wrong gradient).

    Calls under `no_grad`, and calls made by a recomputation, run as usual. A truncated pass (`StopForward`
    raised inside a named module) is fine: the recomputation stops where the first run stopped. Open it around
    the forward and the backward; if it closes in between, backward still recomputes. Names must not nest.
    `recompute_context` makes a context that the recomputation runs in, for state that backward does not
    carry over from the forward (Python `TorchFunctionMode`s, for one).
    """
    return BlockCheckpointing(model, names, recompute_context=recompute_context)


# ---------------------------------------------------------------------------------------- activation offload

class offload_activations:
    """Context manager: tensors saved for backward move to host memory and come back when backward needs them.

    `torch.autograd.graph.save_on_cpu`, except that tensors on the storages of `resident` (the parameters and
    buffers, on the device anyway) and tensors already on the host are kept as they are instead of copied.
    `host_bytes` counts what was moved. Pinned host memory (the default when CUDA is there) lets the copies back
    overlap with compute.
    """

    def __init__(self, resident: Iterable[torch.Tensor] = (), pin_memory: bool | None = None):
        self._resident = {id(storage_of(t)): storage_of(t) for t in resident}
        self.pin_memory = torch.cuda.is_available() if pin_memory is None else pin_memory
        self.host_bytes = 0
        self._hooks = None

    def __enter__(self) -> "offload_activations":
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, self._unpack)
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._hooks.__exit__(*exc)
        self._hooks = None

    def stays(self, tensor: torch.Tensor) -> bool:
        """Whether a saved tensor is kept where it is: it is on the host already, or on a resident storage."""
        return tensor.device.type == "cpu" or id(storage_of(tensor)) in self._resident

    def _pack(self, tensor: torch.Tensor):
        if self.stays(tensor):
            return None, saved_alias(tensor)
        self.host_bytes += tensor.numel() * tensor.element_size()
        return tensor.device, self.to_host(tensor)

    def _unpack(self, packed) -> torch.Tensor:
        device, tensor = packed
        return tensor if device is None else self.to_device(tensor, device)

    def to_host(self, tensor: torch.Tensor) -> torch.Tensor:
        # empty_like keeps the strides of a dense tensor: backward then sees the layout it would have seen (a
        # contiguous copy of a transposed tensor can take another kernel and round differently)
        host = torch.empty_like(tensor, device="cpu", pin_memory=self.pin_memory)
        host.copy_(tensor)
        return host

    def to_device(self, host: torch.Tensor, device: torch.device) -> torch.Tensor:
        return host.to(device, non_blocking=self.pin_memory)


@contextlib.contextmanager
def activation_options(denoiser: nn.Module, mode: str = "none", *, names: Iterable[str] | None = None
                       ) -> Iterator[BlockCheckpointing | offload_activations | None]:
    """What the guidance step keeps for backward: `none`, `checkpoint` (the modules `names`: a backbone's
    `checkpoint_units()`) or `offload`. Open it around the forward and backward of the guidance step:

    >>> with activation_options(model.denoiser, "checkpoint", names=model.checkpoint_units()):
    ...     x = optimise_latent(x, loss_fn, iterations, lr, step)
    """
    if mode not in ACTIVATION_MODES:
        raise ConfigError(f"activation mode must be one of {', '.join(ACTIVATION_MODES)}, got {mode!r}")
    if mode == "none":
        yield None
    elif mode == "checkpoint":
        if names is None:
            raise ValueError("checkpoint needs the names of the units to recompute (a backbone's checkpoint_units)")
        with checkpoint_blocks(denoiser, names) as ckpt:
            yield ckpt
    else:
        with offload_activations(resident=[*denoiser.parameters(), *denoiser.buffers()]) as offload:
            yield offload


__all__ = ["activation_options", "checkpoint_blocks", "offload_activations", "BlockCheckpointing"]
