"""Small host <-> device copies that never make the host wait for the GPU's queued work.

On CUDA a copy from pageable host memory (`torch.tensor(values, device=...)`) waits for the stream, and
`.tolist()` of a device tensor waits for everything queued before it. The decode loop queues a step before it
reads the one before (engine/engine.py), so its copies go through pinned memory and an event instead."""

from __future__ import annotations

from dataclasses import dataclass

import torch


def pinned(values: list[int] | list[float], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """`values` on the host, pinned when `device` is a GPU, so a non-blocking copy from them is truly async."""
    host = torch.tensor(values, dtype=dtype)
    return host.pin_memory() if device.type == "cuda" else host


def to_device(values: list[int] | list[float], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    return pinned(values, dtype, device).to(device, non_blocking=True)


@dataclass
class PendingTokens:
    """Token ids sampled on the device, on their way to the host behind the work that made them."""

    host: torch.Tensor  # [n] int64, valid once `ready` has completed
    ready: torch.cuda.Event | None  # None: the copy was synchronous (CPU)

    @classmethod
    def of(cls, tokens: torch.Tensor) -> PendingTokens:
        # tokens: [n] int64 on the device
        if tokens.device.type != "cuda":
            return cls(tokens, None)
        host = torch.empty(tokens.shape, dtype=tokens.dtype, pin_memory=True)
        host.copy_(tokens, non_blocking=True)
        ready = torch.cuda.Event()
        ready.record()
        return cls(host, ready)

    def wait(self) -> list[int]:
        if self.ready is not None:
            self.ready.synchronize()
        return self.host.tolist()
