"""motiontransfer: zero-shot text-driven video motion transfer with space-time diffusion features.

Yatim, Fridman, Bar-Tal, Kasten, Dekel, "Space-Time Diffusion Features for Zero-Shot Text-Driven Motion
Transfer", CVPR 2024. One public function per command-line subcommand:

    >>> import motiontransfer
    >>> result = motiontransfer.transfer("source.mp4", "a green star on a black background", seed=0)
"""

__version__ = "0.1.0"

from .config import PRESETS, TransferConfig  # noqa: E402
from .errors import MotionTransferError  # noqa: E402
from .pipeline import TransferResult, analyze, invert, text_to_video, transfer  # noqa: E402

__all__ = ["transfer", "invert", "analyze", "text_to_video", "TransferResult", "TransferConfig", "PRESETS", "MotionTransferError",
           "__version__"]
