"""Split-KV decode attention (flash-decoding) for GQA.

_split_kernel:   grid (n, Hkv, splits). Program (row, kv head, split) takes the G = H / Hkv query heads that
                 share the kv head as one [G, Dh] tile, streams its span of cache positions in BLOCK_N tiles
                 (each K/V tile loaded once for all G heads, two tl.dot per tile) with an online softmax in
                 the exp2 domain, and writes its partial (max, sum, unnormalized acc) to a fp32 workspace; with
                 a single split it normalizes and writes the output itself.
_combine_kernel: grid (n * H,): rescales the partials of every split to a common max and normalizes; with the o
                 projection's LoRA shrink, also that head's slice of it (one partial sum per head), and then it
                 runs for a single split too.
Positions >= min(lengths[row], kv_len) are neither loaded nor scored, so a split that starts past its row's
length keeps max -inf and sum 0 and drops out of the combine. The number of splits depends only on n, Hkv,
kv_len and the SM count (static per CUDA graph); no host syncs.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from engine.kernels.lora_triton import lora_a_slice, lora_shrink_store, shrink_args
from engine.kernels.lora_types import LoraShrink
from engine.kernels.nf4_triton import num_sms

BLOCK_N = 64  # cache positions per tile; also the fewest positions a split gets
PROGRAMS_PER_SM = 1  # split programs the default plan aims at per SM
NUM_WARPS, NUM_STAGES = 4, 3
LOG2E = 1.4426950408889634


@triton.jit
def _split_kernel(
    q_ptr, k_ptr, v_ptr, len_ptr, out_ptr, m_ptr, l_ptr, acc_ptr,
    kv_len, qk_scale,
    stride_qn, stride_qh, stride_ks, stride_kh, stride_kp, stride_vs, stride_vh, stride_vp,
    NUM_HEADS: tl.constexpr, GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, NUM_SPLITS: tl.constexpr,
    BLOCKS_PER_SPLIT: tl.constexpr, BLOCK_G: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr,
    DOT_PRECISION: tl.constexpr, DIRECT: tl.constexpr,
):  # fmt: skip
    """DIRECT: a single split normalizes and writes the output itself (no combine)."""
    row = tl.program_id(0).to(tl.int64)
    kv_head = tl.program_id(1)
    split = tl.program_id(2)
    offs_g = tl.arange(0, BLOCK_G)
    offs_d = tl.arange(0, BLOCK_D)
    offs_n = tl.arange(0, BLOCK_N)
    heads = kv_head * GROUP + offs_g  # [BG] query heads of this kv head
    hd_mask = (offs_g < GROUP)[:, None] & (offs_d < HEAD_DIM)[None, :]  # [BG, BD]
    q = tl.load(q_ptr + row * stride_qn + heads[:, None] * stride_qh + offs_d[None, :], mask=hd_mask, other=0.0)
    length = tl.minimum(tl.load(len_ptr + row), kv_len)
    k_base = k_ptr + row * stride_ks + kv_head * stride_kh
    v_base = v_ptr + row * stride_vs + kv_head * stride_vh
    m_i = tl.full([BLOCK_G], float("-inf"), tl.float32)  # running max of the scores (log2 domain)
    l_i = tl.zeros([BLOCK_G], tl.float32)  # running sum of exp2(score - m_i)
    acc = tl.zeros([BLOCK_G, BLOCK_D], tl.float32)  # running sum of exp2(score - m_i) * v
    start = split * BLOCKS_PER_SPLIT * BLOCK_N
    for b in range(0, BLOCKS_PER_SPLIT):
        pos = start + b * BLOCK_N + offs_n  # [BN]
        valid = pos < length
        kv_mask = valid[:, None] & (offs_d < HEAD_DIM)[None, :]  # [BN, BD]
        k = tl.load(k_base + pos[:, None] * stride_kp + offs_d[None, :], mask=kv_mask, other=0.0)  # [BN, BD]
        s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * qk_scale  # [BG, BN]
        s = tl.where(valid[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, axis=1))  # [BG]
        m_ref = tl.where(m_new == float("-inf"), 0.0, m_new)  # a fully masked tile yields 0, not NaN
        alpha = tl.exp2(m_i - m_ref)
        p = tl.exp2(s - m_ref[:, None])  # [BG, BN]
        v = tl.load(v_base + pos[:, None] * stride_vp + offs_d[None, :], mask=kv_mask, other=0.0)  # [BN, BD]
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=DOT_PRECISION)
        l_i = l_i * alpha + tl.sum(p, axis=1)
        m_i = m_new
    if DIRECT:
        out = acc / tl.where(l_i > 0, l_i, 1.0)[:, None]
        dst = out_ptr + (row * NUM_HEADS + heads[:, None]) * HEAD_DIM + offs_d[None, :]
        tl.store(dst, out.to(out_ptr.dtype.element_ty), mask=hd_mask)
    else:
        part = (row * NUM_HEADS + heads) * NUM_SPLITS + split  # [BG]
        tl.store(m_ptr + part, m_i, mask=offs_g < GROUP)
        tl.store(l_ptr + part, l_i, mask=offs_g < GROUP)
        tl.store(acc_ptr + part[:, None] * HEAD_DIM + offs_d[None, :], acc, mask=hd_mask)


@triton.jit
def _combine_kernel(
    m_ptr, l_ptr, acc_ptr, out_ptr, slot_ptr, a_ptr, rank_ptr, t_ptr, SEG_R,
    NUM_HEADS: tl.constexpr, HEAD_DIM: tl.constexpr, NUM_SPLITS: tl.constexpr, BLOCK_S: tl.constexpr,
    BLOCK_D: tl.constexpr, HAS_SHRINK: tl.constexpr, S_NUM_SEG: tl.constexpr, SEG_P2: tl.constexpr,
    RB: tl.constexpr,
):  # fmt: skip
    """Program row * H + head: out = sum_s w_s acc_s / sum_s w_s l_s with w_s = exp2(m_s - max_s m_s); with the
    shrink, t[row, head] = out (rounded) . A_s[:, head's columns]."""
    row_head = tl.program_id(0).to(tl.int64)
    offs_s = tl.arange(0, BLOCK_S)
    offs_d = tl.arange(0, BLOCK_D)
    s_mask = offs_s < NUM_SPLITS
    d_mask = offs_d < HEAD_DIM
    if HAS_SHRINK:  # the adapter's A slice first: its loads overlap the partials'
        row, head = row_head // NUM_HEADS, row_head % NUM_HEADS
        a = lora_a_slice(slot_ptr, a_ptr, rank_ptr, row, head * HEAD_DIM + offs_d, d_mask, NUM_HEADS * HEAD_DIM,
                         SEG_R, S_NUM_SEG, SEG_P2, RB)  # fmt: skip
    part = row_head * NUM_SPLITS + offs_s  # [BS]
    m = tl.load(m_ptr + part, mask=s_mask, other=float("-inf"))
    sums = tl.load(l_ptr + part, mask=s_mask, other=0.0)
    m_max = tl.max(m, axis=0)
    w = tl.exp2(m - tl.where(m_max == float("-inf"), 0.0, m_max))  # [BS], 0 for empty splits
    acc_mask = s_mask[:, None] & d_mask[None, :]
    acc = tl.load(acc_ptr + part[:, None] * HEAD_DIM + offs_d[None, :], mask=acc_mask, other=0.0)  # [BS, BD]
    total = tl.sum(w * sums, axis=0)
    out = (tl.sum(w[:, None] * acc, axis=0) / tl.where(total > 0, total, 1.0)).to(out_ptr.dtype.element_ty)  # [BD]
    tl.store(out_ptr + row_head * HEAD_DIM + offs_d, out, mask=d_mask)
    if HAS_SHRINK:
        lora_shrink_store(a, out.to(tl.float32), row, head, NUM_HEADS, t_ptr, SEG_R, S_NUM_SEG, SEG_P2, RB)


def split_plan(
    n: int, num_kv_heads: int, kv_len: int, device: torch.device, max_splits: int | None = None
) -> tuple[int, int]:
    """(splits, blocks_per_split): enough (n, kv head, split) programs to fill the SMs, at least BLOCK_N
    positions per split, each split a whole number of BLOCK_N tiles."""
    num_blocks = triton.cdiv(kv_len, BLOCK_N)
    if max_splits is None:
        max_splits = triton.cdiv(PROGRAMS_PER_SM * num_sms(device), n * num_kv_heads)
    blocks_per_split = triton.cdiv(num_blocks, max(1, min(max_splits, num_blocks)))
    return triton.cdiv(num_blocks, blocks_per_split), blocks_per_split


def decode_attention_triton(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    lengths: torch.Tensor,
    kv_len: int,
    scale: float,
    max_splits: int | None = None,
    shrink: LoraShrink | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    # q: [n, H, Dh] with a unit last stride (any other strides); k_cache, v_cache: [S, Hkv, P, Dh] with unit
    # last strides; lengths: [n] int -> out [n, H, Dh], t = the shrink of out [n, H, G*R] (None without `shrink`).
    # max_splits caps the splits (default: fill the SMs).
    n, num_heads, head_dim = q.shape
    num_kv_heads = k_cache.shape[1]
    group = num_heads // num_kv_heads
    q = q if q.stride(-1) == 1 else q.contiguous()
    splits, blocks_per_split = split_plan(n, num_kv_heads, kv_len, q.device, max_splits)
    direct = splits == 1 and shrink is None
    out = torch.empty((n, num_heads, head_dim), device=q.device, dtype=q.dtype)
    part_max = torch.empty((n, num_heads, splits), device=q.device, dtype=torch.float32)  # per split
    part_sum = torch.empty_like(part_max)
    acc = torch.empty((n, num_heads, splits, head_dim), device=q.device, dtype=torch.float32)
    block_d = max(16, triton.next_power_of_2(head_dim))
    _split_kernel[(n, num_kv_heads, splits)](
        q, k_cache, v_cache, lengths, out, part_max, part_sum, acc,
        kv_len, scale * LOG2E,
        q.stride(0), q.stride(1), k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        v_cache.stride(0), v_cache.stride(1), v_cache.stride(2),
        NUM_HEADS=num_heads, GROUP=group, HEAD_DIM=head_dim, NUM_SPLITS=splits, BLOCKS_PER_SPLIT=blocks_per_split,
        BLOCK_G=max(16, triton.next_power_of_2(group)), BLOCK_D=block_d, BLOCK_N=BLOCK_N,
        DOT_PRECISION="ieee" if q.dtype == torch.float32 else "tf32", DIRECT=direct, num_warps=NUM_WARPS,
        num_stages=NUM_STAGES,
    )  # fmt: skip
    if direct:
        return out, None
    shrunk, shrink_consts = shrink_args(shrink, n, num_heads, q)
    _combine_kernel[(n * num_heads,)](
        part_max, part_sum, acc, out, *shrunk,
        NUM_HEADS=num_heads, HEAD_DIM=head_dim, NUM_SPLITS=splits, BLOCK_S=triton.next_power_of_2(splits),
        BLOCK_D=block_d, **shrink_consts, num_warps=4,
    )  # fmt: skip
    return out, shrunk[3] if shrink is not None else None
