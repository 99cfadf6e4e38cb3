"""Fused elementwise decode ops: RMSNorm (optionally with the residual add), SiLU-and-multiply, and RoPE with
the KV-cache write. Triton kernels for CUDA tensors, the plain-torch reference on any other device (or for
an empty batch). Every CUDA path is capturable in a CUDA graph: shape checks only, no host syncs, outputs
allocated with static shapes.
"""

from __future__ import annotations

import torch

from engine.kernels.fused_ops_reference import (
    add_rms_norm_reference,
    check_add_args,
    check_norm_args,
    check_rope_kv_args,
    check_silu_mul_args,
    rms_norm_reference,
    rope_kv_write_reference,
    silu_mul_reference,
)

__all__ = ["add_rms_norm", "rms_norm", "rope_kv_write", "silu_mul"]


def _use_triton(t: torch.Tensor) -> bool:
    return t.is_cuda and t.shape[0] > 0


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """y [T, D] = weight * (x * rsqrt(mean(x^2) + eps)) with fp32 statistics; weight [D] in x's dtype."""
    check_norm_args(x, weight)
    if not _use_triton(x):
        return rms_norm_reference(x, weight, eps)
    from engine.kernels.fused_ops_triton import rms_norm_triton

    return rms_norm_triton(x.contiguous(), weight.contiguous(), eps)


def add_rms_norm(
    h: torch.Tensor, delta: torch.Tensor, weight: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(h_new, y): h_new = h + delta (the residual stream, new tensor), y = rms_norm(h_new, weight, eps);
    on CUDA one kernel reads h and delta once and writes both."""
    check_norm_args(h, weight, name="h")
    check_add_args(h, delta)
    if not _use_triton(h):
        return add_rms_norm_reference(h, delta, weight, eps)
    from engine.kernels.fused_ops_triton import add_rms_norm_triton

    return add_rms_norm_triton(h.contiguous(), delta.contiguous(), weight.contiguous(), eps)


def silu_mul(gate_up: torch.Tensor, intermediate: int) -> torch.Tensor:
    """act [T, I] = silu(gate) * up for gate_up [T, 2I] = [gate | up]; fp32 math, one rounding."""
    check_silu_mul_args(gate_up, intermediate)
    if not _use_triton(gate_up):
        return silu_mul_reference(gate_up, intermediate)
    from engine.kernels.fused_ops_triton import silu_mul_triton

    return silu_mul_triton(gate_up.contiguous(), intermediate)


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
) -> torch.Tensor:
    """Decode step: q [n, H, Dh] rotated (new tensor); k rotated and v raw written in place to
    k_cache[i, :, positions[i]], v_cache[i, :, positions[i]] for rows i < n. qkv [n, (H + 2*Hkv) * Dh] =
    [q heads | k heads | v heads]; cos, sin: RotaryEmbedding's full [P, Dh] tables; caches [S >= n, Hkv, P, Dh].
    Positions must lie in [0, P): the CPU path raises IndexError, the CUDA kernel (which cannot check without
    a host sync) writes no cache entry for such a row."""
    check_rope_kv_args(qkv, positions, cos, sin, k_cache, v_cache, num_heads, num_kv_heads, head_dim)
    if not _use_triton(qkv):
        return rope_kv_write_reference(qkv, positions, cos, sin, k_cache, v_cache, num_heads, num_kv_heads, head_dim)
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
    )
