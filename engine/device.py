"""Device selection: "auto" picks CUDA when present, else the CPU; the same code path serves both."""

from __future__ import annotations

import torch

from engine.errors import StoryloomError


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise StoryloomError(f"device '{name}': CUDA is not available on this machine (use 'auto' or 'cpu')")
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    return device


def compute_dtype(device: torch.device) -> torch.dtype:
    return torch.float16 if device.type == "cuda" else torch.float32


def kernels_available(device: torch.device) -> bool:
    """Our Triton kernels serve CUDA devices; the CPU uses the bitsandbytes/torch reference path."""
    from engine.kernels import triton_available

    return device.type == "cuda" and triton_available()
