"""Plain-torch multi-LoRA over stacked adapter slots (the CPU path and the oracle for the Triton kernels).

Same two steps as the Triton kernels: shrink t = x @ A_s[:r]^T (fp32, shape [M, 1, R]: one K split),
then expand y += scale_s * t @ B_s[:r]. Rank padding beyond ranks[s] is masked, so stale values in a
slot never leak into the result; rows with slot -1 add nothing.

Fused projections (q/k/v, gate/up) use segments: A_stack stacks each projection's A ([S, G*R, K] for G
segments), B_stack holds each output column's own B weights ([S, R, N]), and `segments` lists the first
column of segments 1..G-1 (for Llama-3-8B qkv: (4096, 5120)). Column n uses t[..., g*R:(g+1)*R] of its
segment g, so no block-diagonal zeros are stored or read.
"""

from __future__ import annotations

import itertools

import torch


def check_lora_args(
    x: torch.Tensor,
    slot_ids: torch.Tensor,
    a_stack: torch.Tensor,
    b_stack: torch.Tensor,
    scales: torch.Tensor,
    ranks: torch.Tensor,
    y: torch.Tensor,
    segments: tuple[int, ...] = (),
) -> None:
    """Raise ValueError naming the argument whose shape does not fit the others."""
    m, k = x.shape
    s, ra, ka = a_stack.shape
    if ka != k:
        raise ValueError(f"A_stack: expected [S, R, {k}] to match x [M, {k}], got {list(a_stack.shape)}")
    n = y.shape[1]
    r = ra // (len(segments) + 1)
    if list(segments) != sorted(set(segments)) or any(not 0 < c < n for c in segments):
        raise ValueError(f"segments: expected increasing column starts inside (0, {n}), got {list(segments)}")
    if tuple(b_stack.shape) != (s, r, n) or ra % (len(segments) + 1):
        raise ValueError(f"B_stack: expected [{s}, {r}, {n}] (A_stack and y), got {list(b_stack.shape)}")
    if tuple(y.shape) != (m, n):
        raise ValueError(f"y: expected [{m}, N] rows to match x, got {list(y.shape)}")
    if tuple(slot_ids.shape) != (m,) or slot_ids.dtype != torch.int32:
        raise ValueError(f"slot_ids: expected int32 [{m}], got {slot_ids.dtype} {list(slot_ids.shape)}")
    if tuple(scales.shape) != (s,) or tuple(ranks.shape) != (s,):
        raise ValueError(f"scales, ranks: expected [{s}] each, got {list(scales.shape)}, {list(ranks.shape)}")
    if scales.dtype != torch.float32 or ranks.dtype != torch.int32:
        raise ValueError(f"scales, ranks: expected float32 and int32, got {scales.dtype} and {ranks.dtype}")


def _row_rank_mask(slot_ids: torch.Tensor, ranks: torch.Tensor, r: int) -> torch.Tensor:
    """[M, R] True where rank index r < ranks[slot] and the row has an adapter."""
    slots = slot_ids.clamp(min=0).long()  # [M]
    rank = torch.where(slot_ids >= 0, ranks[slots], 0)  # [M]
    return torch.arange(r, device=slot_ids.device)[None, :] < rank[:, None]


def lora_shrink_reference(
    x: torch.Tensor, slot_ids: torch.Tensor, a_stack: torch.Tensor, ranks: torch.Tensor, num_segments: int = 1
) -> torch.Tensor:
    """t: [M, 1, G*R] fp32 = x @ A_s^T per row, zero beyond the row's rank (in each of the G segments)
    and for rows without adapter."""
    slots = slot_ids.clamp(min=0).long()  # [M]
    mask = _row_rank_mask(slot_ids, ranks, a_stack.shape[1] // num_segments).repeat(1, num_segments)  # [M, G*R]
    t = torch.bmm(a_stack[slots].float(), x.float().unsqueeze(-1)).squeeze(-1)  # [M, R]
    return torch.where(mask, t, 0.0).unsqueeze(1)


def lora_expand_reference(
    t: torch.Tensor,
    slot_ids: torch.Tensor,
    b_stack: torch.Tensor,
    scales: torch.Tensor,
    ranks: torch.Tensor,
    y: torch.Tensor,
    segments: tuple[int, ...] = (),
) -> torch.Tensor:
    """y += scale_s * t_s @ B_s[:r] in place, t: [M, splits, G*R] partial sums; returns y."""
    if segments:
        r = b_stack.shape[1]
        bounds = (0, *segments, y.shape[1])
        for g, (start, end) in enumerate(itertools.pairwise(bounds)):
            lora_expand_reference(t[..., g * r : (g + 1) * r], slot_ids, b_stack[..., start:end], scales, ranks,
                                  y[:, start:end])  # fmt: skip
        return y
    slots = slot_ids.clamp(min=0).long()  # [M]
    mask = _row_rank_mask(slot_ids, ranks, b_stack.shape[1])  # [M, R]
    t = torch.where(mask, t.sum(dim=1), 0.0)  # [M, R]
    b = torch.where(mask[:, None, :], b_stack[slots].float().transpose(1, 2), 0.0)  # [M, N, R]
    delta = torch.bmm(b, t.unsqueeze(-1)).squeeze(-1) * scales[slots][:, None]  # [M, N]
    y += torch.where((slot_ids >= 0)[:, None], delta, 0.0).to(y.dtype)
    return y


def lora_reference(
    x: torch.Tensor,
    slot_ids: torch.Tensor,
    a_stack: torch.Tensor,
    b_stack: torch.Tensor,
    scales: torch.Tensor,
    ranks: torch.Tensor,
    y: torch.Tensor,
    segments: tuple[int, ...] = (),
) -> torch.Tensor:
    """y += scale_s * (x @ A_s^T) @ B_s per row (gather + bmm in fp32); returns y."""
    check_lora_args(x, slot_ids, a_stack, b_stack, scales, ranks, y, segments)
    t = lora_shrink_reference(x, slot_ids, a_stack, ranks, len(segments) + 1)
    return lora_expand_reference(t, slot_ids, b_stack, scales, ranks, y, segments)
