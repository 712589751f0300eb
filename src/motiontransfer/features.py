"""Feature capture (paper Sec. 3): forward hooks by module name, and the truncated forward pass.

`FeatureHooks` registers one forward hook per requested module name (as `named_modules()` spells it), writes
the outputs into its own store, and removes every hook on exit, so the model is left exactly as found. The hooks
record only inside `FeatureHooks.run`; ordinary forward passes made while the context is open are untouched. With
`stop_early=True` the hook that completes the set raises `StopForward`, which `FeatureHooks.run` catches: the
UNet's later blocks and output convolution never run, and no library `forward` is replaced. The captured
tensors keep their autograd graphs, so a loss on them back-propagates to the input latent as in a full pass.
"""

from __future__ import annotations

import difflib
from typing import Any, Callable

import torch
from torch import nn

from .errors import ConfigError


class StopForward(Exception):
    """Raised by the last hook of a truncated pass; carries nothing."""


class FeatureHooks:
    """Context manager capturing the outputs of named submodules.

    >>> with FeatureHooks(unet, ["up_blocks.1.temp_convs.1"]) as hooks:
    ...     feats = hooks.run(unet, x, t, encoder_hidden_states=c)   # {name: tensor}
    """

    def __init__(self, model: nn.Module, names: list[str] | tuple[str, ...], *, stop_early: bool = True):
        if len(set(names)) != len(names):
            raise ConfigError(f"layer names repeat: {list(names)}")
        self.model = model
        self.names = tuple(names)
        self.stop_early = stop_early
        self.store: dict[str, torch.Tensor] = {}
        self._handles = []
        self._active = False          # hooks record (and stop the pass) only inside `run`
        self._stop = False            # whether the pass in progress ends at the last hooked module

    def __enter__(self) -> "FeatureHooks":
        modules = dict(self.model.named_modules())
        for name in self.names:
            if name not in modules:
                close = difflib.get_close_matches(name, modules.keys(), n=3, cutoff=0.6)
                hint = f"; did you mean {', '.join(close)}?" if close else ""
                raise ConfigError(f"unknown layer name {name!r}: no module of the UNet has that name{hint}")
        try:
            for name in self.names:
                self._handles.append(modules[name].register_forward_hook(self._hook(name)))
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
        self.store.clear()

    def _hook(self, name: str):
        def hook(module, inputs, output):
            if not self._active:
                return None
            self.store[name] = output[0] if isinstance(output, tuple) else output
            if self._stop and len(self.store) == len(self.names):
                raise StopForward
        return hook

    def run(self, fn: Callable, *args, **kwargs) -> dict[str, torch.Tensor]:
        """Calls `fn(*args, **kwargs)` (a forward pass) and returns the captured outputs by name."""
        return self._capture(fn, self.stop_early, args, kwargs)[1]

    def observe(self, fn: Callable, *args, **kwargs) -> tuple[Any, dict[str, torch.Tensor]]:
        """Like `run`, but the pass always runs to the end: returns `fn`'s result and the captured outputs
        (features read off a pass that is made anyway, e.g. the sampling step's)."""
        return self._capture(fn, False, args, kwargs)

    def _capture(self, fn: Callable, stop: bool, args, kwargs) -> tuple[Any, dict[str, torch.Tensor]]:
        if not self._handles:
            raise RuntimeError("FeatureHooks.run outside its `with` block")
        self.store.clear()
        self._active, self._stop = True, stop
        result = None
        try:
            result = fn(*args, **kwargs)
        except StopForward:
            pass
        finally:
            self._active = False
        missing = [n for n in self.names if n not in self.store]
        if missing:
            raise RuntimeError(f"layers {missing} did not run in the forward pass")
        captured = dict(self.store)
        self.store.clear()
        return result, captured
