"""Decode attention (one new token per row) over the slot KV cache, GQA. Triton split-KV kernels
(flash-decoding) for CUDA tensors, the plain-torch reference on any other device (or for an empty batch).
The CUDA path is capturable in a CUDA graph: shape checks only, no host syncs, a launch grid and workspace
that depend only on the shapes and `kv_len`."""

from __future__ import annotations

import torch

from engine.kernels.decode_attention_reference import check_decode_attention_args, decode_attention_reference
from engine.kernels.lora_reference import lora_shrink_reference
from engine.kernels.lora_types import LoraShrink

__all__ = ["decode_attention", "decode_attention_reference"]


def _use_triton(t: torch.Tensor) -> bool:
    return t.is_cuda and t.shape[0] > 0


def decode_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    lengths: torch.Tensor,
    kv_len: int,
    scale: float | None = None,
    shrink: LoraShrink | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(out, t): out [n, H, Dh] = softmax(q k^T * scale) v per row and query head, in q's dtype with an fp32
    softmax; t = the o projection's LoRA shrink of out viewed as [n, H * Dh] (None without `shrink`).

    q [n, H, Dh] (rotated); k_cache, v_cache [S >= n, Hkv, P, Dh]: row i reads slot i; query head h reads kv
    head h // (H // Hkv). lengths [n] int32/int64: row i attends to positions 0..lengths[i]-1 (its current
    token already written), 1 <= lengths[i] <= kv_len. kv_len: a Python int <= P, the static bound (the CUDA
    graph's KV bucket); no position >= kv_len is read. scale defaults to 1/sqrt(Dh). On CUDA, positions
    >= lengths[i] never influence row i (stale or non-finite cache entries there are harmless)."""
    check_decode_attention_args(q, k_cache, v_cache, lengths, kv_len)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    if shrink is not None and shrink.a_stack.shape[-1] != q.shape[1] * q.shape[2]:
        raise ValueError(f"shrink: expected A_stack [S, R, {q.shape[1] * q.shape[2]}] (H * Dh), "
                         f"got {list(shrink.a_stack.shape)}")  # fmt: skip
    if not _use_triton(q):
        out = decode_attention_reference(q, k_cache, v_cache, lengths, kv_len, scale)
        t = None if shrink is None else lora_shrink_reference(out.reshape(out.shape[0], -1), *shrink[:4])
        return out, t
    if k_cache.stride(-1) != 1 or v_cache.stride(-1) != 1:
        raise ValueError(
            f"k_cache, v_cache: expected a unit last stride, got {k_cache.stride()} and {v_cache.stride()}"
        )
    from engine.kernels.decode_attention_triton import decode_attention_triton

    return decode_attention_triton(q, k_cache, v_cache, lengths, kv_len, scale, shrink=shrink)
