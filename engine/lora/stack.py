"""Stacked adapter weights of one (possibly fused) projection: one slot per resident adapter, written in place.

Layout (shared with engine.kernels): A [S, G*R, K] holds each of the G parts' A in its own R rows; B [S, R, N]
holds in row r rank r of every output column's B, pre-multiplied by its part's scale (parts may differ in rank
and alpha), so a rank's columns are contiguous.
Rank padding is zero and masked by `ranks`.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from engine.kernels import LoraExpand, LoraShrink, lora_shrink_expand
from engine.lora.context import LoraRouting


class LoraStack:
    def __init__(
        self,
        num_slots: int,
        max_rank: int,
        in_features: int,
        parts: list[tuple[int, int]],
        device: torch.device,
        dtype: torch.dtype,
    ) -> None:
        self.parts = parts  # (first output column, width) per part
        self.max_rank = max_rank
        out_features = sum(width for _, width in parts)
        self.a = torch.zeros(num_slots, len(parts) * max_rank, in_features, device=device, dtype=dtype)
        self.b = torch.zeros(num_slots, max_rank, out_features, device=device, dtype=dtype)
        self.scales = torch.ones(num_slots, device=device, dtype=torch.float32)  # scales live in B
        self.ranks = torch.zeros(num_slots, device=device, dtype=torch.int32)
        self.segments = tuple(start for start, _ in parts[1:])
        self.rank_of_slot = [0] * num_slots
        self.active_rank = 0

    def tensors(self) -> tuple[torch.Tensor, ...]:
        return self.a, self.b, self.scales, self.ranks

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors())

    def write(self, slot: int, weights: dict[int, tuple[torch.Tensor, torch.Tensor, float]]) -> None:
        """weights: part index -> (A [r, K], B [n, r], scale)."""
        self.clear(slot)
        rank = 0
        for g, (a, b, scale) in weights.items():
            start, width = self.parts[g]
            r = a.shape[0]
            self.a[slot, g * self.max_rank : g * self.max_rank + r].copy_(a)
            self.b[slot, :r, start : start + width].copy_(b.float().t() * scale)
            rank = max(rank, r)
        self.ranks[slot] = rank
        self.rank_of_slot[slot] = rank
        self.active_rank = max(self.rank_of_slot)

    def clear(self, slot: int) -> None:
        self.a[slot].zero_()
        self.b[slot].zero_()
        self.ranks[slot] = 0
        self.rank_of_slot[slot] = 0
        self.active_rank = max(self.rank_of_slot)

    def add_to(self, x: torch.Tensor, y: torch.Tensor, routing: LoraRouting) -> None:
        # x: [T, K]; y: [T, N] projection output, updated in place
        if routing.runs:
            first = 0
            for s, n in routing.runs:
                if s >= 0:
                    self._add_dense(x[first : first + n], y[first : first + n], s)
                first += n
            return
        assert routing.token_slots is not None
        lora_shrink_expand(x, routing.token_slots, self.a, self.b, self.scales, self.ranks, y, self.segments,
                           self.active_rank)  # fmt: skip

    def _add_dense(self, x: torch.Tensor, y: torch.Tensor, s: int) -> None:
        # every row on slot s: x [n, K], y [n, N] updated in place
        r = self.rank_of_slot[s]
        if r == 0:
            return
        for g, (start, width) in enumerate(self.parts):
            h = x @ self.a[s, g * self.max_rank : g * self.max_rank + r].t()  # [n, r]
            y[:, start : start + width] += h @ self.b[s, :r, start : start + width]


class TokenLora(NamedTuple):
    """A stack with this decode step's slot per row: its shrink and expand halves for fused ops."""

    stack: LoraStack
    slots: torch.Tensor  # [T] int32, -1 = no adapter

    def shrink(self) -> LoraShrink:
        stack = self.stack
        return LoraShrink(self.slots, stack.a, stack.ranks, len(stack.parts), stack.active_rank)

    def expand(self, t: torch.Tensor) -> LoraExpand:
        # t: [T, splits, G*R], the shrink's output
        stack = self.stack
        return LoraExpand(t, self.slots, stack.b, stack.scales, stack.ranks, stack.segments, stack.active_rank)
