"""Per-step LoRA routing, set by the model runner before a forward and reset after it."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class LoraRouting:
    """Which adapter slot each token uses. Exactly one of the two fields is set."""

    token_slots: torch.Tensor | None = None  # [T] int32, -1 = no adapter (decode: one token per row)
    runs: tuple[tuple[int, int], ...] = ()  # prefill: (slot, token count) for consecutive tokens, -1 = no adapter

    def __post_init__(self) -> None:
        assert (self.token_slots is None) != (not self.runs), "route by token_slots or by runs, exactly one"

    @classmethod
    def of_runs(cls, slots: list[int], lengths: list[int]) -> LoraRouting | None:
        """Prompts one after another, prompt i (lengths[i] tokens) on slots[i]; neighbours on one slot merge.
        None when no prompt uses an adapter."""
        runs: list[tuple[int, int]] = []
        for slot, n in zip(slots, lengths, strict=True):
            if runs and runs[-1][0] == slot:
                runs[-1] = (slot, runs[-1][1] + n)
            else:
                runs.append((slot, n))
        return cls(runs=tuple(runs)) if any(slot >= 0 for slot, _ in runs) else None


_current: LoraRouting | None = None


def set_routing(routing: LoraRouting | None) -> None:
    global _current
    _current = routing


def current_routing() -> LoraRouting | None:
    return _current
