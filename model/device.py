"""The one device resolver: a device name as users give it (`--device`, `GLCCL_DEVICE`) to a torch.device."""

from __future__ import annotations

import torch

DEVICES = ("auto", "cpu", "cuda")


def resolve_device(name: str) -> torch.device:
    """auto: CUDA when available, else the CPU; cpu; cuda (a ValueError when CUDA is not available)."""
    if name not in DEVICES:
        raise ValueError(f"unknown device {name!r}; expected auto, cpu or cuda")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("device cuda asked for, but CUDA is not available on this machine")
    return torch.device(name)
