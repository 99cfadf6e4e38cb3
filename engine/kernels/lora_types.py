"""The LoRA halves that other kernels fuse: the shrink into the op that makes a projection's input, the
expand into the op that consumes its output (or into `nf4_matmul`'s epilogue)."""

from __future__ import annotations

from typing import NamedTuple

import torch

ONE_PASS_MAX_ROWS = 16  # lora_shrink_expand in one launch up to this many rows (decode batches); the one pass
# repeats the shrink for every column block, so longer batches take the shrink and expand kernels


class LoraShrink(NamedTuple):
    """The shrink half of LoRA: t = x @ A_s^T per row, fused into the op that computes x."""

    slot_ids: torch.Tensor  # [M] int32, -1 = no adapter
    a_stack: torch.Tensor  # [S, G*R, K] fp16
    ranks: torch.Tensor  # [S] int32
    num_segments: int = 1  # G: the rank mask applies in each of the G blocks of R rows
    rank_bound: int = 0  # the largest rank among the slots (0: R); the kernels read no rank past it


class LoraExpand(NamedTuple):
    """The expand half of LoRA: y += scale_s * t @ B_s, t being the shrink's output."""

    t: torch.Tensor  # [M, splits, G*R] fp32
    slot_ids: torch.Tensor  # [M] int32, -1 = no adapter
    b_stack: torch.Tensor  # [S, R, N] fp16
    scales: torch.Tensor  # [S] fp32
    ranks: torch.Tensor  # [S] int32
    segments: tuple[int, ...] = ()  # first columns of segments 1..G-1 of a fused projection
    rank_bound: int = 0  # the largest rank among the slots (0: R); the kernels read no rank past it
