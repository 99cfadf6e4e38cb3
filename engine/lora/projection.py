"""A (possibly fused) base projection plus the LoRA stack over the modules it contains."""

from __future__ import annotations

import torch
from torch import nn

from engine.lora.context import current_routing
from engine.lora.stack import LoraStack, TokenLora
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
        self.lora: LoraStack | None = None

    def part_index(self, module: str) -> int:
        return list(self.parts).index(module)

    def ensure_lora(self, num_slots: int, max_rank: int, device: torch.device) -> LoraStack:
        # device: the engine's, even while the base weights wait in CPU RAM (Engine.parked)
        if self.lora is None:
            w = next(iter(self.base.buffers()))
            dtype = getattr(self.base, "compute_dtype", w.dtype)
            parts = list(self.parts.values())
            self.lora = LoraStack(num_slots, max_rank, self.base.in_features, parts, device, dtype)
        return self.lora

    def lora_nbytes(self) -> int:
        return self.lora.nbytes() if self.lora is not None else 0

    def token_lora(self) -> TokenLora | None:
        """This decode step's adapters per row, for the ops around the projection to fuse its LoRA halves;
        None without per-row routing or without any adapter resident here."""
        routing = current_routing()
        if routing is None or routing.token_slots is None or self.lora is None or self.lora.active_rank == 0:
            return None
        return TokenLora(self.lora, routing.token_slots)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: [T, K] -> y: [T, N_total], the LoRA added here (not fused into the ops around the projection)
        y = self.base(x)
        routing = current_routing()
        if routing is not None and self.lora is not None and self.lora.active_rank:  # 0: every slot cleared
            self.lora.add_to(x, y, routing)
        return y
