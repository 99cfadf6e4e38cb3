"""Fused elementwise decode ops: RMSNorm (with the residual add when there is one), SiLU-and-multiply, and
RoPE with the KV-cache write. Triton kernels for CUDA tensors, the plain-torch reference on any other device (or for
an empty batch). Every CUDA path is capturable in a CUDA graph: shape checks only, no host syncs, outputs
allocated with static shapes. The ops around a projection take its LoRA halves (engine.kernels.lora_types):
a `LoraShrink` of the projection that reads the op's output, a `LoraExpand` of the one that wrote its input.
"""

from __future__ import annotations

import torch

from engine.kernels.fused_ops_reference import (
    add_rms_norm_reference,
    check_add_args,
    check_norm_args,
    check_rope_kv_args,
    check_silu_mul_args,
    rope_kv_write_reference,
    silu_mul_reference,
)
from engine.kernels.lora_types import LoraExpand, LoraShrink

__all__ = ["add_rms_norm", "rope_kv_write", "silu_mul"]


def _use_triton(t: torch.Tensor) -> bool:
    return t.is_cuda and t.shape[0] > 0


def add_rms_norm(
    h: torch.Tensor, delta: torch.Tensor | None, weight: torch.Tensor, eps: float, shrink: LoraShrink | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """(h_new, y, t): h_new = h + delta (the residual stream, new tensor; h itself when delta is None),
    y = rms_norm(h_new, weight, eps), t = the next projection's LoRA shrink of y (None without `shrink`);
    on CUDA one kernel reads h and delta once and writes all three."""
    check_norm_args(h, weight, name="h")
    if delta is not None:
        check_add_args(h, delta)
    if not _use_triton(h):
        return add_rms_norm_reference(h, delta, weight, eps, shrink)
    from engine.kernels.fused_ops_triton import add_rms_norm_triton

    delta = None if delta is None else delta.contiguous()
    return add_rms_norm_triton(h.contiguous(), delta, weight.contiguous(), eps, shrink)


def silu_mul(
    gate_up: torch.Tensor, intermediate: int, lora: LoraExpand | None = None, shrink: LoraShrink | None = None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(act, t): act [T, I] = silu(gate) * up for gate_up [T, 2I] = [gate | up] plus gate_up's LoRA `lora`;
    fp32 math, one rounding; t = the down projection's LoRA shrink of act (None without `shrink`)."""
    check_silu_mul_args(gate_up, intermediate)
    if not _use_triton(gate_up):
        return silu_mul_reference(gate_up, intermediate, lora, shrink)
    from engine.kernels.fused_ops_triton import silu_mul_triton

    return silu_mul_triton(gate_up.contiguous(), intermediate, lora, shrink)


def rope_kv_write(
    qkv: torch.Tensor,
    positions: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    num_heads: int,
    num_kv_heads: int,
    head_dim: int,
    lora: LoraExpand | None = None,
) -> torch.Tensor:
    """Decode step, qkv's LoRA `lora` added first: q [n, H, Dh] rotated (new tensor); k rotated and v raw
    written in place to k_cache[i, :, positions[i]], v_cache[i, :, positions[i]] for rows i < n.
    qkv [n, (H + 2*Hkv) * Dh] = [q heads | k heads | v heads]; cos, sin: RotaryEmbedding's full [P, Dh]
    tables; caches [S >= n, Hkv, P, Dh]. Positions must lie in [0, P): the CPU path raises IndexError, the
    CUDA kernel (which cannot check without a host sync) writes no cache entry for such a row."""
    check_rope_kv_args(qkv, positions, cos, sin, k_cache, v_cache, num_heads, num_kv_heads, head_dim)
    if not _use_triton(qkv):
        return rope_kv_write_reference(
            qkv, positions, cos, sin, k_cache, v_cache, num_heads, num_kv_heads, head_dim, lora
        )
    if k_cache.stride() != v_cache.stride() or k_cache.stride(-1) != 1:
        raise ValueError(
            f"k_cache, v_cache: expected equal strides with a unit last stride, got {k_cache.stride()} "
            f"and {v_cache.stride()}"
        )
    from engine.kernels.fused_ops_triton import rope_kv_write_triton

    return rope_kv_write_triton(
        qkv.contiguous(),
        positions,
        cos.contiguous(),
        sin.contiguous(),
        k_cache,
        v_cache,
        num_heads,
        num_kv_heads,
        head_dim,
        lora,
    )
