"""Triton kernels that fuse the small elementwise ops of a decode step (memory-bound, one pass each).

rms_norm:      y = w * (x * rsqrt(mean(x^2) + eps)), one program per row (the residual add optionally fused)
silu_mul:      act = silu(gate) * up, one program per (row, column block)
rope_kv_write: rotate q and k heads by the row's position, write k and v into the row's KV-cache slot,
               one program per (row, q or kv head)
Math in fp32; stores round to the tensor's dtype. RMSNorm rounds the normalized row to the activation dtype
before the weight multiply, like engine/model.py and transformers' LlamaRMSNorm. No host syncs and static
grids, so every launch can be captured in a CUDA graph.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

SILU_MUL_BLOCK = 1024


@triton.jit
def _rms_norm_kernel(
    x_ptr, delta_ptr, h_out_ptr, w_ptr, y_ptr, D, eps,
    HAS_ADD: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    """Row r: h = x[r] (+ delta[r], stored to h_out[r]), y[r] = w * rms_normalized(h)."""
    base = tl.program_id(0).to(tl.int64) * D
    offs = tl.arange(0, BLOCK_D)
    mask = offs < D
    h = tl.load(x_ptr + base + offs, mask=mask, other=0.0)  # [BD]
    if HAS_ADD:
        delta = tl.load(delta_ptr + base + offs, mask=mask, other=0.0)
        h = (h.to(tl.float32) + delta.to(tl.float32)).to(h_out_ptr.dtype.element_ty)
        tl.store(h_out_ptr + base + offs, h, mask=mask)
    hf = h.to(tl.float32)
    rstd = tl.rsqrt(tl.sum(hf * hf, axis=0) / D + eps)
    normed = (hf * rstd).to(y_ptr.dtype.element_ty).to(tl.float32)
    w = tl.load(w_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    tl.store(y_ptr + base + offs, (w * normed).to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _silu_mul_kernel(gate_up_ptr, out_ptr, inter, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < inter
    gate = tl.load(gate_up_ptr + row * 2 * inter + offs, mask=mask, other=0.0).to(tl.float32)  # [BLOCK]
    up = tl.load(gate_up_ptr + row * 2 * inter + inter + offs, mask=mask, other=0.0).to(tl.float32)
    act = gate * tl.sigmoid(gate) * up
    tl.store(out_ptr + row * inter + offs, act.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _rope_kv_write_kernel(
    qkv_ptr, pos_ptr, cos_ptr, sin_ptr, q_ptr, k_cache_ptr, v_cache_ptr,
    num_positions, stride_qkv, stride_slot, stride_head, stride_pos,
    NUM_HEADS: tl.constexpr, NUM_KV_HEADS: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_HALF: tl.constexpr,
):  # fmt: skip
    """Program (row, head): head < H rotates q head `head` into q[row]; otherwise kv head j = head - H: its
    rotated k and raw v go to cache[row, j, positions[row]]. Head `head` of either kind starts at column
    head * Dh of qkv (q heads, then k heads); v head j starts at column (H + Hkv + j) * Dh."""
    row = tl.program_id(0).to(tl.int64)
    head = tl.program_id(1)
    pos = tl.load(pos_ptr + row)
    in_table = (pos >= 0) & (pos < num_positions)  # a stray position writes nothing instead of out of bounds
    pos = tl.where(in_table, pos, 0)
    half = HEAD_DIM // 2
    offs = tl.arange(0, BLOCK_HALF)
    mask = offs < half
    table = pos * HEAD_DIM + offs
    cos1 = tl.load(cos_ptr + table, mask=mask, other=0.0).to(tl.float32)  # [BH]
    cos2 = tl.load(cos_ptr + table + half, mask=mask, other=0.0).to(tl.float32)
    sin1 = tl.load(sin_ptr + table, mask=mask, other=0.0).to(tl.float32)
    sin2 = tl.load(sin_ptr + table + half, mask=mask, other=0.0).to(tl.float32)
    src = qkv_ptr + row * stride_qkv + head * HEAD_DIM
    x1 = tl.load(src + offs, mask=mask, other=0.0).to(tl.float32)
    x2 = tl.load(src + half + offs, mask=mask, other=0.0).to(tl.float32)
    # x * cos + rotate_half(x) * sin, rotate_half(x) = cat(-x2, x1)
    out1 = (x1 * cos1 - x2 * sin1).to(q_ptr.dtype.element_ty)
    out2 = (x2 * cos2 + x1 * sin2).to(q_ptr.dtype.element_ty)
    if head < NUM_HEADS:
        dst = q_ptr + (row * NUM_HEADS + head) * HEAD_DIM
        tl.store(dst + offs, out1, mask=mask)
        tl.store(dst + half + offs, out2, mask=mask)
    else:
        kv_head = head - NUM_HEADS
        slot = row * stride_slot + kv_head * stride_head + pos * stride_pos
        store_mask = mask & in_table
        tl.store(k_cache_ptr + slot + offs, out1, mask=store_mask)
        tl.store(k_cache_ptr + slot + half + offs, out2, mask=store_mask)
        v_src = qkv_ptr + row * stride_qkv + (head + NUM_KV_HEADS) * HEAD_DIM
        v1 = tl.load(v_src + offs, mask=mask, other=0.0)
        v2 = tl.load(v_src + half + offs, mask=mask, other=0.0)
        tl.store(v_cache_ptr + slot + offs, v1, mask=store_mask)
        tl.store(v_cache_ptr + slot + half + offs, v2, mask=store_mask)


def _norm_warps(block: int) -> int:
    return min(max(block // 512, 1), 8)


def rms_norm_triton(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    # x: [T, D] contiguous -> y [T, D]
    t, d = x.shape
    y = torch.empty_like(x)
    block = triton.next_power_of_2(d)
    _rms_norm_kernel[(t,)](x, x, x, weight, y, d, eps, HAS_ADD=False, BLOCK_D=block, num_warps=_norm_warps(block))
    return y


def add_rms_norm_triton(
    h: torch.Tensor, delta: torch.Tensor, weight: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    # h, delta: [T, D] contiguous -> h_new = h + delta, y = rms_norm(h_new)
    t, d = h.shape
    h_new, y = torch.empty_like(h), torch.empty_like(h)
    block = triton.next_power_of_2(d)
    _rms_norm_kernel[(t,)](
        h, delta, h_new, weight, y, d, eps, HAS_ADD=True, BLOCK_D=block, num_warps=_norm_warps(block)
    )
    return h_new, y


def silu_mul_triton(gate_up: torch.Tensor, intermediate: int) -> torch.Tensor:
    # gate_up: [T, 2I] contiguous -> act [T, I]
    t = gate_up.shape[0]
    act = torch.empty((t, intermediate), device=gate_up.device, dtype=gate_up.dtype)
    block = min(SILU_MUL_BLOCK, triton.next_power_of_2(intermediate))
    grid = (t, triton.cdiv(intermediate, block))
    _silu_mul_kernel[grid](gate_up, act, intermediate, BLOCK=block, num_warps=4)
    return act


def rope_kv_write_triton(
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
    # qkv: [n, (H + 2*Hkv) * Dh] with unit column stride; cos, sin: [P, Dh] contiguous;
    # k_cache, v_cache: [S, Hkv, P, Dh] with equal strides and unit last stride -> q [n, H, Dh]
    n = qkv.shape[0]
    q = torch.empty((n, num_heads, head_dim), device=qkv.device, dtype=qkv.dtype)
    stride_slot, stride_head, stride_pos, _ = k_cache.stride()
    _rope_kv_write_kernel[(n, num_heads + num_kv_heads)](
        qkv, positions, cos, sin, q, k_cache, v_cache,
        cos.shape[0], qkv.stride(0), stride_slot, stride_head, stride_pos,
        NUM_HEADS=num_heads, NUM_KV_HEADS=num_kv_heads, HEAD_DIM=head_dim,
        BLOCK_HALF=triton.next_power_of_2(head_dim // 2), num_warps=1,
    )  # fmt: skip
    return q
