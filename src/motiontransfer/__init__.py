"""motiontransfer: zero-shot text-driven video motion transfer with space-time diffusion features.

Yatim, Fridman, Bar-Tal, Kasten, Dekel, "Space-Time Diffusion Features for Zero-Shot Text-Driven Motion
Transfer", CVPR 2024. One public function per command-line subcommand:

    >>> import motiontransfer
    >>> result = motiontransfer.transfer("source.mp4", "a green star on a black background", seed=0)

The names below are imported on first use, so `import motiontransfer` (and `motiontransfer --help`) loads
neither torch nor diffusers.
"""

__version__ = "0.1.0"

_LAZY = {  # name -> the module that defines it
    "transfer": "pipeline", "transfer_many": "pipeline", "invert": "pipeline", "analyze": "pipeline",
    "text_to_video": "pipeline", "TransferResult": "pipeline", "InversionResult": "pipeline",
    "TransferConfig": "config", "PRESETS": "config", "MotionTransferError": "errors",
}

__all__ = [*_LAZY, "__version__"]


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
