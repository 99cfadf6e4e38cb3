"""Per-step LoRA routing, set by the model runner before a forward and reset after it."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class LoraRouting:
    """Which adapter slot each token uses. Exactly one of the two fields is set."""

    token_slots: torch.Tensor | None = None  # [T] int32, -1 = no adapter (decode: one token per row)
    uniform_slot: int | None = None  # every token of the forward uses this slot (one request's prefill)


_current: LoraRouting | None = None


def set_routing(routing: LoraRouting | None) -> None:
    global _current
    _current = routing


def current_routing() -> LoraRouting | None:
    return _current
