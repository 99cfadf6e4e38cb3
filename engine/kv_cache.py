"""Preallocated KV cache: a fixed number of slots, each with room for max_seq_len positions."""

from __future__ import annotations

import torch


class KVCache:
    def __init__(
        self,
        num_layers: int,
        num_slots: int,
        num_kv_heads: int,
        max_seq_len: int,
        head_dim: int,
        device,
        dtype,
    ) -> None:
        shape = (num_slots, num_kv_heads, max_seq_len, head_dim)
        self.k = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(num_layers)]  # L x [S, Hkv, P, D]
        self.v = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(num_layers)]
        self.num_slots = num_slots
        self.max_seq_len = max_seq_len

    def tensors(self) -> list[torch.Tensor]:
        return self.k + self.v

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors())

    @staticmethod
    def bytes_needed(
        num_layers: int, num_slots: int, num_kv_heads: int, max_seq_len: int, head_dim: int, dtype_bytes: int
    ) -> int:
        return 2 * num_layers * num_slots * num_kv_heads * max_seq_len * head_dim * dtype_bytes
