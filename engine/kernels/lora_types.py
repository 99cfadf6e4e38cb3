"""The LoRA expand arguments that `nf4_matmul` fuses into its epilogue."""

from __future__ import annotations

from typing import NamedTuple

import torch


class LoraExpand(NamedTuple):
    """The expand half of LoRA, fused into `nf4_matmul`'s epilogue: t is `lora_shrink`'s output."""

    t: torch.Tensor  # [M, splits, G*R] fp32
    slot_ids: torch.Tensor  # [M] int32, -1 = no adapter
    b_stack: torch.Tensor  # [S, N, R] fp16
    scales: torch.Tensor  # [S] fp32
    ranks: torch.Tensor  # [S] int32
    segments: tuple[int, ...] = ()  # first columns of segments 1..G-1 of a fused projection
