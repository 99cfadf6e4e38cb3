"""Stacked adapter weights of one projection: one slot per resident adapter, written in place."""

from __future__ import annotations

import torch

from engine.lora.context import LoraRouting


class LoraStack:
    def __init__(self, num_slots: int, max_rank: int, in_features: int, out_features: int, device, dtype) -> None:
        self.a = torch.zeros(num_slots, max_rank, in_features, device=device, dtype=dtype)  # [S, R, K]
        self.b = torch.zeros(num_slots, out_features, max_rank, device=device, dtype=dtype)  # [S, N, R]
        self.scale = torch.zeros(num_slots, device=device, dtype=torch.float32)  # [S]
        self.ranks = [0] * num_slots
        self.active_rank = 0

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.a, self.b, self.scale))

    def write(self, slot: int, a: torch.Tensor, b: torch.Tensor, scale: float) -> None:
        # a: [r, K]; b: [N, r]
        r = a.shape[0]
        self.a[slot].zero_()
        self.b[slot].zero_()
        self.a[slot, :r].copy_(a)
        self.b[slot, :, :r].copy_(b)
        self.scale[slot] = scale
        self.ranks[slot] = r
        self.active_rank = max(self.ranks)

    def clear(self, slot: int) -> None:
        self.a[slot].zero_()
        self.b[slot].zero_()
        self.scale[slot] = 0.0
        self.ranks[slot] = 0
        self.active_rank = max(self.ranks)

    def add_to(self, x: torch.Tensor, y: torch.Tensor, routing: LoraRouting) -> None:
        # x: [T, K]; y: [T, N] (a view into the projection output), updated in place
        r = self.active_rank
        if r == 0:
            return
        if routing.uniform_slot is not None:
            s = routing.uniform_slot
            if self.ranks[s] == 0:
                return
            h = x @ self.a[s, : self.ranks[s]].t()  # [T, r]
            y += (h @ self.b[s, :, : self.ranks[s]].t()) * self.scale[s].to(y.dtype)
            return
        slots = routing.token_slots
        assert slots is not None
        idx = slots.clamp(min=0)  # [T]
        gate = self.scale[idx] * (slots >= 0)  # [T]
        a = self.a[idx, :r]  # [T, r, K]
        b = self.b[idx, :, :r]  # [T, N, r]
        h = torch.bmm(a, x.unsqueeze(-1))  # [T, r, 1]
        y += (torch.bmm(b, h).squeeze(-1) * gate.unsqueeze(-1)).to(y.dtype)
