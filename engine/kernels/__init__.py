"""Fast kernels for the decode hot path: NF4 small-M matmul and multi-LoRA shrink/expand.

Every function runs Triton kernels (for 2-8 rows of the NF4 matmul, a Gluon one where Triton has Gluon) for CUDA
tensors and the plain-torch reference on any other device.
NF4 weights are bitsandbytes' packed layout (`quantize_4bit(W [N, K], quant_type="nf4", blocksize=64,
compress_statistics=False)`): qweight uint8, absmax fp32 [N*K/64], code fp32 [16].

CUDA use: call each function once before CUDA-graph capture (it builds a per-`code` lookup table and the
split-K ticket buffer); keep `code` tensors alive as long as their weights; run all calls on one stream
(the engine thread's). Measured speeds and the M=1 advice are in docs/KERNELS.md.
"""

from __future__ import annotations

import torch

from engine.kernels.lora_reference import (
    check_lora_args,
    lora_expand_reference,
    lora_reference,
    lora_shrink_reference,
)
from engine.kernels.lora_types import ONE_PASS_MAX_ROWS, LoraExpand, LoraShrink
from engine.kernels.nf4_reference import check_nf4_args, nf4_dequantize_reference, nf4_matmul_reference

__all__ = [
    "LoraExpand",
    "LoraShrink",
    "lora_expand",
    "lora_reference",
    "lora_shrink",
    "lora_shrink_expand",
    "nf4_dequantize",
    "nf4_dequantize_reference",
    "nf4_matmul",
    "nf4_matmul_reference",
    "triton_available",
]


def triton_available() -> bool:
    """True when CUDA and Triton are both usable here."""
    if not torch.cuda.is_available():
        return False
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def _use_triton(t: torch.Tensor) -> bool:
    return t.is_cuda


def nf4_matmul(
    x: torch.Tensor,
    qweight: torch.Tensor,
    absmax: torch.Tensor,
    code: torch.Tensor,
    out_features: int,
    in_features: int,
    blocksize: int = 64,
    lora: LoraExpand | None = None,
) -> torch.Tensor:
    """y [M, N] = x [M, K] @ W^T (+ the fused LoRA expand). CUDA: fp16 x, one pass over the weight bytes."""
    n, k = out_features, in_features
    check_nf4_args(qweight, absmax, code, n, k, blocksize)
    if x.dim() != 2 or x.shape[1] != k:
        raise ValueError(f"x: expected [M, {k}], got {list(x.shape)}")
    if not _use_triton(x):
        y = nf4_matmul_reference(x, qweight, absmax, code, n, k, blocksize)
        return y if lora is None else lora_expand_reference(*lora[:5], y, lora.segments)
    if x.dtype != torch.float16 or k % blocksize:
        raise ValueError(f"x: the CUDA kernel takes fp16 x and K % {blocksize} == 0, got {x.dtype}, K={k}")
    from engine.kernels.nf4_triton import nf4_matmul_triton

    return nf4_matmul_triton(x.contiguous(), qweight, absmax, code, n, k, blocksize, lora=lora)


def nf4_dequantize(
    qweight: torch.Tensor, absmax: torch.Tensor, code: torch.Tensor, out_features: int, in_features: int,
    blocksize: int = 64,
) -> torch.Tensor:  # fmt: skip
    """fp16 [N, K] weight, bit-identical to bitsandbytes' dequantize_4bit."""
    check_nf4_args(qweight, absmax, code, out_features, in_features, blocksize)
    if not _use_triton(qweight) or (out_features * in_features) % blocksize:
        return nf4_dequantize_reference(qweight, absmax, code, out_features, in_features, blocksize)
    from engine.kernels.nf4_triton import nf4_dequantize_triton

    return nf4_dequantize_triton(qweight, absmax, code, out_features, in_features, blocksize)


def lora_shrink(
    x: torch.Tensor, slot_ids: torch.Tensor, a_stack: torch.Tensor, ranks: torch.Tensor, num_segments: int = 1
) -> torch.Tensor:
    """t: [M, splits, G*R] fp32 partial sums of x @ A_s^T over K splits (their sum is x @ A_s^T);
    A_stack: [S, G*R, K] for a fused projection of G segments, the rank mask applies per segment."""
    if not _use_triton(x):
        return lora_shrink_reference(x, slot_ids, a_stack, ranks, num_segments)
    from engine.kernels.lora_triton import lora_shrink_triton

    return lora_shrink_triton(x.contiguous(), slot_ids, a_stack, ranks, num_segments)


def lora_expand(
    t: torch.Tensor,
    slot_ids: torch.Tensor,
    b_stack: torch.Tensor,
    scales: torch.Tensor,
    ranks: torch.Tensor,
    y: torch.Tensor,
    segments: tuple[int, ...] = (),
    rank_bound: int = 0,
) -> torch.Tensor:
    """y += scale_s * t @ B_s in place (y may be a column slice of a wider buffer); returns y. rank_bound: the
    largest rank among the slots (0: B's padded rank), the last rank the kernel reads."""
    if not _use_triton(y):
        return lora_expand_reference(t, slot_ids, b_stack, scales, ranks, y, segments)
    from engine.kernels.lora_triton import lora_expand_triton

    return lora_expand_triton(t, slot_ids, b_stack, scales, ranks, y, segments, rank_bound)


def lora_shrink_expand(
    x: torch.Tensor,
    slot_ids: torch.Tensor,
    a_stack: torch.Tensor,
    b_stack: torch.Tensor,
    scales: torch.Tensor,
    ranks: torch.Tensor,
    y: torch.Tensor,
    segments: tuple[int, ...] = (),
    rank_bound: int = 0,
) -> torch.Tensor:
    """y += scale_s * (x @ A_s^T) @ B_s per row, s = slot_ids[row] (-1 adds nothing); returns y.
    `segments`: first columns of segments 1.. of a fused projection (see lora_reference.py); rank_bound as in
    `lora_expand`. On CUDA one launch up to ONE_PASS_MAX_ROWS rows, else a shrink and an expand kernel."""
    check_lora_args(x, slot_ids, a_stack, b_stack, scales, ranks, y, segments)
    if _use_triton(y) and x.shape[0] <= ONE_PASS_MAX_ROWS:  # a decode batch: one launch
        from engine.kernels.lora_triton import lora_one_pass_triton

        return lora_one_pass_triton(x.contiguous(), slot_ids, a_stack, b_stack, scales, ranks, y, segments, rank_bound)
    t = lora_shrink(x, slot_ids, a_stack, ranks, len(segments) + 1)
    return lora_expand(t, slot_ids, b_stack, scales, ranks, y, segments, rank_bound)
