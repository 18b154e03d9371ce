"""Which torch device a configuration's ``device`` string names."""

from __future__ import annotations

import re

import torch

from models.errors import ConfigError

_PATTERN = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")


def resolve_device(spec: str = "auto") -> torch.device:
    """``"auto"`` → CUDA if available, else CPU; ``"cpu"``, ``"cuda"``, ``"cuda:N"`` as given.

    Raises:
        ConfigError: (field ``device``) malformed, or CUDA requested but not available.
    """
    if not _PATTERN.match(spec):
        raise ConfigError("device", f"must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {spec!r}")
    if spec == "auto":
        spec = "cuda" if torch.cuda.is_available() else "cpu"
    if spec == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ConfigError("device", f"{spec!r} requested but CUDA is not available")
    device = torch.device(spec)
    index = device.index if device.index is not None else torch.cuda.current_device()
    if index >= torch.cuda.device_count():
        raise ConfigError("device", f"{spec!r}: only {torch.cuda.device_count()} CUDA device(s)")
    return torch.device("cuda", index)
