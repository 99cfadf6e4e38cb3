"""Triton kernels that fuse the small elementwise ops of a decode step (memory-bound, one pass each).

rms_norm:      y = w * (x * rsqrt(mean(x^2) + eps)), one program per row (the residual add optionally fused);
               with the next projection's LoRA shrink one program per (row, K slice), each finding the row's
               statistics itself
silu_mul:      act = silu(gate) * up, one program per (row, column block); optionally gate_up's LoRA expand
               first and the down projection's LoRA shrink after
rope_kv_write: rotate q and k heads by the row's position, write k and v into the row's KV-cache slot,
               one program per (row, q, k or v head); optionally qkv's LoRA expand first
Math in fp32; stores round to the tensor's dtype. RMSNorm rounds the normalized row to the activation dtype
before the weight multiply, like engine/model.py and transformers' LlamaRMSNorm. No host syncs and static
grids, so every launch can be captured in a CUDA graph.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from engine.kernels.lora_triton import (
    expand_args,
    lora_a_slice,
    lora_delta_tile,
    lora_shrink_store,
    shrink_args,
    shrink_tile,
)
from engine.kernels.lora_types import LoraExpand, LoraShrink

SILU_MUL_BLOCK = 1024
LORA_SILU_MUL_BLOCK = 512  # twice the programs of SILU_MUL_BLOCK: adapter reads spread over more SMs
NORM_SHRINK_SLICE = 512


@triton.jit
def _rms_norm_kernel(
    x_ptr, delta_ptr, h_out_ptr, w_ptr, y_ptr, D, eps,
    slot_ptr, a_ptr, rank_ptr, t_ptr, SEG_R,
    HAS_ADD: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_K: tl.constexpr,
    HAS_SHRINK: tl.constexpr, S_NUM_SEG: tl.constexpr, SEG_P2: tl.constexpr, RB: tl.constexpr,
):  # fmt: skip
    """Row r: h = x[r] (+ delta[r], stored to h_out[r]), y[r] = w * rms_normalized(h). With the shrink, program
    (r, j) stores columns [j*BLOCK_K, (j+1)*BLOCK_K) of h_out and y, and that slice's shrink partial t[r, j]."""
    row = tl.program_id(0)
    base = row.to(tl.int64) * D
    if HAS_SHRINK:  # the adapter's A slice first: its loads overlap the row's
        offs_k = tl.program_id(1) * BLOCK_K + tl.arange(0, BLOCK_K)
        a = lora_a_slice(slot_ptr, a_ptr, rank_ptr, row, offs_k, offs_k < D, D, SEG_R, S_NUM_SEG, SEG_P2, RB)
    offs = tl.arange(0, BLOCK_D)
    h = _residual(x_ptr, delta_ptr, h_out_ptr, base, offs, offs < D, HAS_ADD)  # [BD]
    hf = h.to(tl.float32)
    rstd = tl.rsqrt(tl.sum(hf * hf, axis=0) / D + eps)
    if HAS_SHRINK:
        offs = offs_k
        hf = _residual(x_ptr, delta_ptr, h_out_ptr, base, offs, offs < D, HAS_ADD).to(tl.float32)  # [BK]
    mask = offs < D
    if HAS_ADD:
        tl.store(h_out_ptr + base + offs, hf.to(h_out_ptr.dtype.element_ty), mask=mask)
    normed = (hf * rstd).to(y_ptr.dtype.element_ty).to(tl.float32)
    w = tl.load(w_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    y = (w * normed).to(y_ptr.dtype.element_ty)
    tl.store(y_ptr + base + offs, y, mask=mask)
    if HAS_SHRINK:
        lora_shrink_store(a, y.to(tl.float32), row, tl.program_id(1), tl.num_programs(1), t_ptr, SEG_R, S_NUM_SEG,
                          SEG_P2, RB)  # fmt: skip


@triton.jit
def _residual(x_ptr, delta_ptr, h_out_ptr, base, offs, mask, HAS_ADD: tl.constexpr):
    """x[offs] (+ delta[offs], rounded to the residual's dtype) of one row."""
    h = tl.load(x_ptr + base + offs, mask=mask, other=0.0)
    if HAS_ADD:
        delta = tl.load(delta_ptr + base + offs, mask=mask, other=0.0)
        h = (h.to(tl.float32) + delta.to(tl.float32)).to(h_out_ptr.dtype.element_ty)
    return h


@triton.jit
def _silu_mul_kernel(
    gate_up_ptr, out_ptr, M, inter,
    et_ptr, slot_ptr, eb_ptr, escale_ptr, erank_ptr, e_r, e_seg1, e_seg2,
    sslot_ptr, sa_ptr, srank_ptr, st_ptr, s_segr,
    BLOCK: tl.constexpr, HAS_LORA: tl.constexpr, BLOCK_R: tl.constexpr, NUM_SEG: tl.constexpr,
    T_SPLITS: tl.constexpr, T_BLOCK: tl.constexpr, R_P2: tl.constexpr, HAS_SHRINK: tl.constexpr,
    S_NUM_SEG: tl.constexpr, SEG_P2: tl.constexpr, RB: tl.constexpr,
):  # fmt: skip
    """Program (row, j): act[row, j-th block] = silu(gate) * up, gate_up's LoRA delta added to gate and up
    first (HAS_LORA), the down projection's shrink partial of this block into t[row, j] after (HAS_SHRINK).
    The adapter reads come first, so their latencies overlap the gate_up loads."""
    row = tl.program_id(0)
    col0 = tl.program_id(1) * BLOCK
    offs = col0 + tl.arange(0, BLOCK)
    mask = offs < inter
    if HAS_SHRINK:
        a = lora_a_slice(sslot_ptr, sa_ptr, srank_ptr, row, offs, mask, inter, s_segr, S_NUM_SEG, SEG_P2, RB)
    if HAS_LORA:
        rows = row + tl.arange(0, 1)
        d_gate = lora_delta_tile(et_ptr, slot_ptr, eb_ptr, escale_ptr, erank_ptr, rows, col0, M, 2 * inter, e_r,
                                 e_seg1, e_seg2, 1, BLOCK, BLOCK_R, NUM_SEG, T_SPLITS, T_BLOCK, R_P2)  # fmt: skip
        d_up = lora_delta_tile(et_ptr, slot_ptr, eb_ptr, escale_ptr, erank_ptr, rows, inter + col0, M, 2 * inter,
                               e_r, e_seg1, e_seg2, 1, BLOCK, BLOCK_R, NUM_SEG, T_SPLITS, T_BLOCK, R_P2)  # fmt: skip
    src = gate_up_ptr + row.to(tl.int64) * 2 * inter
    gate = tl.load(src + offs, mask=mask, other=0.0)  # [BLOCK]
    up = tl.load(src + inter + offs, mask=mask, other=0.0)
    if HAS_LORA:  # rounded to the activation dtype, as if the expand had written gate_up
        gate = (gate.to(tl.float32) + tl.reshape(d_gate, (BLOCK,))).to(gate_up_ptr.dtype.element_ty)
        up = (up.to(tl.float32) + tl.reshape(d_up, (BLOCK,))).to(gate_up_ptr.dtype.element_ty)
    gate = gate.to(tl.float32)
    act = (gate * tl.sigmoid(gate) * up.to(tl.float32)).to(out_ptr.dtype.element_ty)
    tl.store(out_ptr + row.to(tl.int64) * inter + offs, act, mask=mask)
    if HAS_SHRINK:
        lora_shrink_store(a, act.to(tl.float32), row, tl.program_id(1), tl.num_programs(1), st_ptr, s_segr,
                          S_NUM_SEG, SEG_P2, RB)  # fmt: skip


@triton.jit
def _rope_kv_write_kernel(
    qkv_ptr, pos_ptr, cos_ptr, sin_ptr, q_ptr, k_cache_ptr, v_cache_ptr,
    num_positions, stride_qkv, stride_slot, stride_head, stride_pos,
    t_ptr, slot_ptr, b_ptr, scale_ptr, rank_ptr, lora_r, seg1, seg2, M,
    NUM_HEADS: tl.constexpr, NUM_KV_HEADS: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_HALF: tl.constexpr,
    HAS_LORA: tl.constexpr, BLOCK_R: tl.constexpr, NUM_SEG: tl.constexpr, T_SPLITS: tl.constexpr,
    T_BLOCK: tl.constexpr, R_P2: tl.constexpr,
):  # fmt: skip
    """Program (row, head) takes columns [head * Dh, (head + 1) * Dh) of qkv = [q heads | k heads | v heads]:
    a q head is rotated into q[row]; a k head j is rotated and a v head j copied into cache[row, j,
    positions[row]]. HAS_LORA: qkv's LoRA delta is added to each half head first (rounded to qkv's dtype, as if
    the expand had written qkv)."""
    row = tl.program_id(0).to(tl.int64)
    head = tl.program_id(1)
    width = (NUM_HEADS + 2 * NUM_KV_HEADS) * HEAD_DIM
    lora = (t_ptr, slot_ptr, b_ptr, scale_ptr, rank_ptr, row, M, stride_qkv, width, lora_r, seg1, seg2)
    half = HEAD_DIM // 2
    offs = tl.arange(0, BLOCK_HALF)
    mask = offs < half
    x1 = _qkv_half(qkv_ptr, head * HEAD_DIM, offs, mask, lora, HAS_LORA, BLOCK_HALF, BLOCK_R, NUM_SEG, T_SPLITS,
                   T_BLOCK, R_P2)  # fmt: skip
    x2 = _qkv_half(qkv_ptr, head * HEAD_DIM + half, offs, mask, lora, HAS_LORA, BLOCK_HALF, BLOCK_R, NUM_SEG,
                   T_SPLITS, T_BLOCK, R_P2)  # fmt: skip
    pos = tl.load(pos_ptr + row)
    in_table = (pos >= 0) & (pos < num_positions)  # a stray position writes nothing instead of out of bounds
    pos = tl.where(in_table, pos, 0)
    table = pos * HEAD_DIM + offs
    cos1 = tl.load(cos_ptr + table, mask=mask, other=0.0).to(tl.float32)  # [BH]
    cos2 = tl.load(cos_ptr + table + half, mask=mask, other=0.0).to(tl.float32)
    sin1 = tl.load(sin_ptr + table, mask=mask, other=0.0).to(tl.float32)
    sin2 = tl.load(sin_ptr + table + half, mask=mask, other=0.0).to(tl.float32)
    # x * cos + rotate_half(x) * sin, rotate_half(x) = cat(-x2, x1); v heads pass unrotated
    is_v = head >= NUM_HEADS + NUM_KV_HEADS
    out1 = tl.where(is_v, x1, (x1.to(tl.float32) * cos1 - x2.to(tl.float32) * sin1).to(q_ptr.dtype.element_ty))
    out2 = tl.where(is_v, x2, (x2.to(tl.float32) * cos2 + x1.to(tl.float32) * sin2).to(q_ptr.dtype.element_ty))
    if head < NUM_HEADS:
        dst = q_ptr + (row * NUM_HEADS + head) * HEAD_DIM
        store_mask = mask
    else:
        kv_head = (head - NUM_HEADS) % NUM_KV_HEADS
        dst = tl.where(is_v, v_cache_ptr, k_cache_ptr) + row * stride_slot + kv_head * stride_head + pos * stride_pos
        store_mask = mask & in_table
    tl.store(dst + offs, out1, mask=store_mask)
    tl.store(dst + half + offs, out2, mask=store_mask)


@triton.jit
def _qkv_half(
    qkv_ptr, col0, offs, mask, lora, HAS_LORA: tl.constexpr, BLOCK_HALF: tl.constexpr, BLOCK_R: tl.constexpr,
    NUM_SEG: tl.constexpr, T_SPLITS: tl.constexpr, T_BLOCK: tl.constexpr, R_P2: tl.constexpr,
):  # fmt: skip
    """qkv[row, col0 + offs] in qkv's dtype, plus the row's LoRA delta for those columns with HAS_LORA."""
    t_ptr, slot_ptr, b_ptr, scale_ptr, rank_ptr, row, M, stride_qkv, width, lora_r, seg1, seg2 = lora
    x = tl.load(qkv_ptr + row * stride_qkv + col0 + offs, mask=mask, other=0.0)  # [BH]
    if HAS_LORA:
        delta = lora_delta_tile(t_ptr, slot_ptr, b_ptr, scale_ptr, rank_ptr, row + tl.arange(0, 1), col0, M,
                                width, lora_r, seg1, seg2, 1, BLOCK_HALF, BLOCK_R, NUM_SEG, T_SPLITS,
                                T_BLOCK, R_P2)  # fmt: skip
        x = (x.to(tl.float32) + tl.reshape(delta, (BLOCK_HALF,))).to(qkv_ptr.dtype.element_ty)
    return x


def _norm_warps(block: int) -> int:
    return min(max(block // 512, 1), 8)


def add_rms_norm_triton(
    h: torch.Tensor, delta: torch.Tensor | None, weight: torch.Tensor, eps: float, shrink: LoraShrink | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    # h, delta: [T, D] contiguous -> h_new = h (+ delta), y = rms_norm(h_new), t = the shrink of y [T, splits, G*R]
    t, d = h.shape
    h_new = h if delta is None else torch.empty_like(h)
    y = torch.empty_like(h)
    block = triton.next_power_of_2(d)
    block_k = shrink_tile(shrink, min(NORM_SHRINK_SLICE, block)) if shrink is not None else block
    splits = triton.cdiv(d, block_k)
    lora_args, lora_consts = shrink_args(shrink, t, splits, h)
    _rms_norm_kernel[(t, splits)](
        h, h if delta is None else delta, h_new, weight, y, d, eps, *lora_args,
        HAS_ADD=delta is not None, BLOCK_D=block, BLOCK_K=block_k, **lora_consts, num_warps=_norm_warps(block),
    )  # fmt: skip
    return h_new, y, lora_args[3] if shrink is not None else None


def silu_mul_triton(
    gate_up: torch.Tensor, intermediate: int, lora: LoraExpand | None = None, shrink: LoraShrink | None = None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    # gate_up: [T, 2I] contiguous -> act [T, I], t = the shrink of act [T, splits, G*R]
    t = gate_up.shape[0]
    act = torch.empty((t, intermediate), device=gate_up.device, dtype=gate_up.dtype)
    fused = lora is not None or shrink is not None
    block = min(LORA_SILU_MUL_BLOCK if fused else SILU_MUL_BLOCK, triton.next_power_of_2(intermediate))
    block = shrink_tile(shrink, block)
    splits = triton.cdiv(intermediate, block)
    expand, expand_consts = expand_args(lora, gate_up, 1)  # a gate tile's columns past I are masked
    shrunk, shrink_consts = shrink_args(shrink, t, splits, gate_up)
    _silu_mul_kernel[(t, splits)](
        gate_up, act, t, intermediate, *expand, *shrunk,
        BLOCK=block, **expand_consts, **shrink_consts, num_warps=8 if fused else 4,
    )  # fmt: skip
    return act, shrunk[3] if shrink is not None else None


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
    lora: LoraExpand | None = None,
) -> torch.Tensor:
    # qkv: [n, (H + 2*Hkv) * Dh] contiguous; cos, sin: [P, Dh] contiguous;
    # k_cache, v_cache: [S, Hkv, P, Dh] with equal strides and unit last stride -> q [n, H, Dh]
    n = qkv.shape[0]
    q = torch.empty((n, num_heads, head_dim), device=qkv.device, dtype=qkv.dtype)
    stride_slot, stride_head, stride_pos, _ = k_cache.stride()
    expand, expand_consts = expand_args(lora, qkv, head_dim // 2)  # half heads never straddle q, k and v
    _rope_kv_write_kernel[(n, num_heads + 2 * num_kv_heads)](
        qkv, positions, cos, sin, q, k_cache, v_cache,
        cos.shape[0], qkv.stride(0), stride_slot, stride_head, stride_pos, *expand, n,
        NUM_HEADS=num_heads, NUM_KV_HEADS=num_kv_heads, HEAD_DIM=head_dim,
        BLOCK_HALF=triton.next_power_of_2(head_dim // 2), **expand_consts, num_warps=1,
    )  # fmt: skip
    return q
