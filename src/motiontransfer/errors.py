"""Errors a user can act on.

Every error that the command line turns into one line on stderr derives from `MotionTransferError`; its
message says what went wrong and what to do about it. Anything else is a bug and keeps its traceback.
"""


class MotionTransferError(Exception):
    """Base class: the message is shown to the user as it is."""


class VideoError(MotionTransferError):
    """The input video cannot be read, has no video stream, or has too few frames."""


class ModelError(MotionTransferError):
    """The model folder or id cannot be loaded (missing, incomplete, unsafe weights, offline)."""


class ConfigError(MotionTransferError):
    """An option or a config file is invalid (unknown key, bad value, unknown layer name)."""


class OutputError(MotionTransferError):
    """The output directory cannot be written, or it holds a result that must not be overwritten."""
