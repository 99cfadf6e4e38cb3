"""A (possibly fused) base projection plus the LoRA stacks of the modules it contains."""

from __future__ import annotations

import torch
from torch import nn

from engine.lora.context import current_routing
from engine.lora.stack import LoraStack
from engine.quant import BaseLinear


class Projection(nn.Module):
    """Fused base linear whose output is the concatenation of named modules (e.g. q_proj, k_proj, v_proj)."""

    def __init__(self, base: BaseLinear, parts: dict[str, int]) -> None:
        super().__init__()
        self.base = base
        assert sum(parts.values()) == base.out_features
        self.parts: dict[str, tuple[int, int]] = {}
        offset = 0
        for name, size in parts.items():
            self.parts[name] = (offset, size)
            offset += size
        self.stacks: dict[str, LoraStack] = {}

    def ensure_stack(self, module: str, num_slots: int, max_rank: int) -> LoraStack:
        if module not in self.stacks:
            _, size = self.parts[module]
            w = next(iter(self.base.buffers()))
            dtype = getattr(self.base, "compute_dtype", w.dtype)
            self.stacks[module] = LoraStack(num_slots, max_rank, self.base.in_features, size, w.device, dtype)
        return self.stacks[module]

    def lora_nbytes(self) -> int:
        return sum(s.nbytes() for s in self.stacks.values())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: [T, K] -> y: [T, N_total]
        y = self.base(x)
        routing = current_routing()
        if routing is not None:
            for module, stack in self.stacks.items():
                start, size = self.parts[module]
                stack.add_to(x, y[:, start : start + size], routing)
        return y
