"""Triton multi-LoRA kernels over stacked adapter slots (Punica-style shrink, then expand).

shrink: t[m, split, :] = x[m, k-slice] @ A_s[:, k-slice]^T             (fp32 partial sums, one per K split)
expand: y[m, n]       += scale_s * (sum_split t[m, split, g*R : g*R + rank_s]) . B_s[:rank_s, n]
s = slot_ids[m], g = segment of column n (fused projections, see lora_reference.py). Rows with slot -1
read nothing and add nothing; padding past the largest resident rank (the rank bound) is never read. Below the
bound, the shrink kernel and the expands mask their loads by each row's rank; the fused shrink (`lora_a_slice`) and
the one pass load up to the bound and zero the ranks past the row's own afterwards. Both steps also fuse into the
kernels next to a projection through `lora_delta_tile` and `lora_a_slice` + `lora_shrink_store`: the expand into the NF4
matmul's epilogue (nf4_triton.py), RoPE and SiLU-mul, the shrink into RMSNorm and SiLU-mul (fused_ops_triton.py).
one pass:  both steps in one launch for decode batches, each program repeating its row's shrink (lora_one_pass_triton).
"""

from __future__ import annotations

from typing import Any

import torch
import triton
import triton.language as tl

from engine.kernels.lora_types import ONE_PASS_MAX_ROWS, LoraExpand, LoraShrink

R_CHUNK = tl.constexpr(16)
SHRINK_BLOCK_K = 128
MAX_SHRINK_SPLITS = 8
MAX_SEGMENTS = 3
EXPAND_BLOCK_N = 128
ONE_PASS_BLOCK_K = 2048  # K per loop step: more of A's loads in flight per program (probe_lora_fusion)
SHRINK_TILE = 32768  # A values a fused shrink holds per program


@triton.jit
def segment_of(n_start, seg1, seg2, NUM_SEG: tl.constexpr):
    """The segment of a fused projection's column n_start (segments 1 and 2 start at seg1 and seg2)."""
    seg = 0
    if NUM_SEG > 1:
        seg += (n_start >= seg1).to(tl.int32)
    if NUM_SEG > 2:
        seg += (n_start >= seg2).to(tl.int32)
    return seg


@triton.jit
def lora_delta_tile(
    t_ptr, slot_ptr, b_ptr, scale_ptr, rank_ptr, offs_m, n_start, M, N, R, seg1, seg2,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_R: tl.constexpr, NUM_SEG: tl.constexpr,
    T_SPLITS: tl.constexpr, T_BLOCK: tl.constexpr, R_P2: tl.constexpr,
):  # fmt: skip
    """scale_s * t[m, g*R : g*R + r] . B_s[:r, n] for a [BLOCK_M, BLOCK_N] tile starting at column n_start
    (every unmasked column lies in segment g of n_start); fp32; zero for rows without an adapter. t's T_SPLITS
    partial sums of every rank (BLOCK_R: the largest resident rank, R_P2 its power of two) load as one tile and are
    summed once (summed rank by rank, 32 partials cost the one-row NF4 epilogue 4.9 us instead of 1.2 us at M = 1 on
    an H200, probe_lora_fusion); then rank by rank, one outer product each: every B row loads contiguous. B's
    loads wait for the slot alone, masked by the adapter, not its rank (B past a slot's rank is zero: LoraStack.write
    clears the slot); the rank masks the summed t, which may hold anything past it. This made SiLU-mul's expand
    cheaper (probe_lora_fusion, H200: both halves 7.7 -> 6.8 us at M = 8) and the separate expand kernel dearer where
    BLOCK_R exceeds the rows' ranks (rank 16 of a rank-64 stack without a rank bound: 5.5 -> 7.5 us at M = 8). As
    one [BM, ranks, BN] tile summed over the ranks, the expand kernel took 4.5 us instead of 7.5, SiLU-mul 12.9
    instead of 6.8 (the sum over ranks crosses warps)."""
    m_mask = offs_m < M
    slots = tl.load(slot_ptr + offs_m, mask=m_mask, other=-1)  # [BM]
    active = slots >= 0
    s = tl.where(active, slots, 0)
    rank = tl.load(rank_ptr + s, mask=active, other=0)  # [BM]
    scale = tl.load(scale_ptr + s, mask=active, other=0.0)  # [BM]
    seg = segment_of(n_start, seg1, seg2, NUM_SEG)
    offs_n = n_start + tl.arange(0, BLOCK_N)
    n_mask = offs_n < N
    offs_i = tl.arange(0, T_BLOCK)
    offs_r = tl.arange(0, R_P2)
    t_ptrs = t_ptr + ((offs_m[:, None, None] * T_SPLITS + offs_i[None, :, None]) * (NUM_SEG * R) + seg * R
                      + offs_r[None, None, :])  # [BM, TB, RP]  # fmt: skip
    t_mask = (offs_i < T_SPLITS)[None, :, None] & (offs_r < BLOCK_R)[None, None, :] & m_mask[:, None, None]
    t = tl.sum(tl.load(t_ptrs, mask=t_mask, other=0.0), axis=1)  # [BM, RP]: the partials summed once
    t = tl.where(offs_r[None, :] < rank[:, None], t, 0.0)
    b_rows = b_ptr + s[:, None] * (N * R) + offs_n[None, :]  # [BM, BN]
    delta = tl.zeros((BLOCK_M, BLOCK_N), tl.float32)
    for r in tl.static_range(BLOCK_R):
        t_r = tl.sum(tl.where(offs_r[None, :] == r, t, 0.0), axis=1)  # [BM]
        b_r = tl.load(b_rows + r * N, mask=active[:, None] & n_mask[None, :], other=0.0)  # [BM, BN]
        delta += t_r[:, None] * b_r.to(tl.float32)
    return delta * scale[:, None]


@triton.jit
def lora_a_slice(
    slot_ptr, a_ptr, rank_ptr, row, offs_k, k_mask, K, SEG_R,
    NUM_SEG: tl.constexpr, SEG_P2: tl.constexpr, RB: tl.constexpr,
):  # fmt: skip
    """A_s[g*SEG_R + r, offs_k] for each segment g < NUM_SEG and r < RB (the largest resident rank, padded),
    s = slot_ids[row]: [SEG_P2 * RB, BK], zero past the row's rank and for a row without an adapter. Load it
    early: nothing in it waits for the op's own data."""
    slot = tl.load(slot_ptr + row)
    s = tl.maximum(slot, 0)
    rank = tl.where(slot >= 0, tl.load(rank_ptr + s), 0)
    offs = tl.arange(0, SEG_P2 * RB)
    g, r = offs // RB, offs % RB
    mask = (g < NUM_SEG) & (r < SEG_R) & (slot >= 0)  # not the rank: the load waits for the slot only
    a_rows = a_ptr + s.to(tl.int64) * (NUM_SEG * SEG_R * K) + (g * SEG_R + r) * K
    a = tl.load(a_rows[:, None] + offs_k[None, :], mask=mask[:, None] & k_mask[None, :], other=0.0)
    return tl.where((r < rank)[:, None], a, 0.0)


@triton.jit
def lora_shrink_store(
    a, xk, row, split, num_splits, t_ptr, SEG_R, NUM_SEG: tl.constexpr, SEG_P2: tl.constexpr, RB: tl.constexpr,
):  # fmt: skip
    """t[row, split, g*SEG_R + r] = xk . a[g*RB + r] for r < RB: one row's K slice xk [BK] (fp32) against
    `lora_a_slice`'s tile. Entries past RB stay unwritten; every reader masks by rank."""
    t = tl.sum(a.to(tl.float32) * xk[None, :], axis=1)  # [SEG_P2 * RB]
    offs = tl.arange(0, SEG_P2 * RB)
    g, r = offs // RB, offs % RB
    mask = (g < NUM_SEG) & (r < SEG_R)
    tl.store(t_ptr + (row * num_splits + split) * (NUM_SEG * SEG_R) + g * SEG_R + r, t, mask=mask)


@triton.jit
def _lora_shrink_kernel(
    x_ptr, slot_ptr, a_ptr, rank_ptr, t_ptr, K, R_TOTAL, SEG_R, stride_xm, k_per_split,
    BLOCK_K: tl.constexpr,
):  # fmt: skip
    """One (row, K split, rank chunk of R_CHUNK rows of A) per program: the accumulator is [R_CHUNK, BLOCK_K]
    whatever the stack's padded rank, and chunks past the adapter's rank in their segment read nothing."""
    m = tl.program_id(0)
    split = tl.program_id(1)
    r0 = tl.program_id(2) * R_CHUNK
    num_splits = tl.num_programs(1)
    slot = tl.load(slot_ptr + m)
    s = tl.maximum(slot, 0)
    rank = tl.where(slot >= 0, tl.load(rank_ptr + s), 0)
    offs_r = r0 + tl.arange(0, R_CHUNK)
    r_mask = ((offs_r % SEG_R) < rank) & (offs_r < R_TOTAL)  # rank within each segment
    k_begin = split * k_per_split
    k_end = tl.minimum(k_begin + k_per_split, K)
    acc = tl.zeros((R_CHUNK, BLOCK_K), tl.float32)
    if tl.max(r_mask.to(tl.int32), axis=0) > 0:
        for k0 in range(k_begin, k_end, BLOCK_K):
            offs_k = k0 + tl.arange(0, BLOCK_K)
            k_mask = offs_k < k_end
            xk = tl.load(x_ptr + m * stride_xm + offs_k, mask=k_mask, other=0.0)  # [BK]
            a = tl.load(
                a_ptr + s * (R_TOTAL * K) + offs_r[:, None] * K + offs_k[None, :],
                mask=r_mask[:, None] & k_mask[None, :],
                other=0.0,
            )  # [RC, BK]
            acc += a.to(tl.float32) * xk.to(tl.float32)[None, :]
    t = tl.sum(acc, axis=1)  # [RC]
    tl.store(t_ptr + (m * num_splits + split) * R_TOTAL + offs_r, t, mask=offs_r < R_TOTAL)


@triton.jit
def _lora_expand_kernel(
    t_ptr, slot_ptr, b_ptr, scale_ptr, rank_ptr, y_ptr, M, N, R, seg1, seg2, stride_ym,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_R: tl.constexpr, NUM_SEG: tl.constexpr,
    T_SPLITS: tl.constexpr, T_BLOCK: tl.constexpr, R_P2: tl.constexpr,
):  # fmt: skip
    n_start = tl.program_id(0) * BLOCK_N
    offs_n = n_start + tl.arange(0, BLOCK_N)
    offs_m = tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)
    delta = lora_delta_tile(t_ptr, slot_ptr, b_ptr, scale_ptr, rank_ptr, offs_m, n_start, M, N, R, seg1, seg2,
                            BLOCK_M, BLOCK_N, BLOCK_R, NUM_SEG, T_SPLITS, T_BLOCK, R_P2)  # fmt: skip
    slots = tl.load(slot_ptr + offs_m, mask=offs_m < M, other=-1)
    mask = (slots >= 0)[:, None] & (offs_n < N)[None, :]
    y_ptrs = y_ptr + offs_m[:, None] * stride_ym + offs_n[None, :]
    y = tl.load(y_ptrs, mask=mask, other=0.0)
    tl.store(y_ptrs, (y.to(tl.float32) + delta).to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _lora_one_pass_kernel(
    x_ptr, slot_ptr, a_ptr, b_ptr, scale_ptr, rank_ptr, y_ptr, N, K, R, seg1, seg2, stride_xm, stride_ym,
    BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, RB: tl.constexpr, NUM_SEG: tl.constexpr,
):  # fmt: skip
    """Program (column block, row): the row's shrink over all of K for the segment g of its columns, then
    y[row, block] += scale_s * t . B_s[:rank, block]. Every program of a row recomputes the shrink (its A slice
    comes from L2 after the first); in exchange a decode step's LoRA is one launch, not two."""
    n_start = tl.program_id(0) * BLOCK_N
    row = tl.program_id(1)
    slot = tl.load(slot_ptr + row)
    active = slot >= 0
    s = tl.maximum(slot, 0).to(tl.int64)
    rank = tl.where(active, tl.load(rank_ptr + s), 0)
    scale = tl.where(active, tl.load(scale_ptr + s), 0.0)
    seg = segment_of(n_start, seg1, seg2, NUM_SEG)
    offs_r = tl.arange(0, RB)
    in_stack = active & (offs_r < R)[:, None]  # [RB, 1]: the rank applies after the loads (see lora_a_slice)
    offs_n = n_start + tl.arange(0, BLOCK_N)
    n_mask = offs_n < N
    b = tl.load(b_ptr + s * (R * N) + offs_r[:, None] * N + offs_n[None, :], mask=in_stack & n_mask[None, :],
                other=0.0)  # [RB, BN]: first, its latency overlaps the shrink  # fmt: skip
    a_rows = a_ptr + s * (NUM_SEG * R * K) + (seg * R + offs_r)[:, None] * K  # [RB, 1]
    t = tl.zeros((RB,), tl.float32)
    for k0 in range(0, K, BLOCK_K):  # a few wide steps, each reduced at once: registers for the A tile only
        offs_k = k0 + tl.arange(0, BLOCK_K)
        k_mask = offs_k < K
        xk = tl.load(x_ptr + row * stride_xm + offs_k, mask=k_mask, other=0.0)  # [BK]
        a = tl.load(a_rows + offs_k[None, :], mask=in_stack & k_mask[None, :], other=0.0)  # [RB, BK]
        t += tl.sum(a.to(tl.float32) * xk.to(tl.float32)[None, :], axis=1)
    t = tl.where(offs_r < rank, t, 0.0)  # [RB]
    delta = tl.sum(t[:, None] * b.to(tl.float32), axis=0) * scale  # [BN]
    mask = n_mask & active
    y_ptrs = y_ptr + row * stride_ym + offs_n
    y = tl.load(y_ptrs, mask=mask, other=0.0)
    tl.store(y_ptrs, (y.to(tl.float32) + delta).to(y_ptr.dtype.element_ty), mask=mask)


def block_r(r: int) -> int:
    """Rank padded to a multiple of the kernels' rank chunk (a power of two)."""
    return max(R_CHUNK.value, triton.next_power_of_2(r))


def expand_rank(rank_bound: int, r: int) -> int:
    """The ranks an expand reads, one by one: the largest resident rank (0: all r of the stack)."""
    return min(rank_bound or r, r)


def bounded_rank(rank_bound: int, r: int) -> int:
    """The ranks a shrink reads as one tile: `expand_rank`, padded like block_r."""
    return block_r(expand_rank(rank_bound, r))


def segment_args(segments: tuple[int, ...], block_n: int) -> tuple[int, int]:
    """The segment starts as kernel scalars; each must fall on a tile boundary."""
    assert len(segments) < MAX_SEGMENTS, f"at most {MAX_SEGMENTS} segments"
    assert all(c % block_n == 0 for c in segments), f"segment starts {segments} must be multiples of {block_n}"
    padded = (*segments, 0, 0)
    return padded[0], padded[1]


def expand_args(lora: LoraExpand | None, dummy: torch.Tensor, block_n: int) -> tuple[tuple, dict[str, Any]]:
    """A fused expand's kernel arguments: (t, slot_ids, B, scales, ranks, R, seg1, seg2) and its constexprs
    (HAS_LORA, BLOCK_R, NUM_SEG, T_SPLITS, T_BLOCK, R_P2); `dummy` fills the pointers without one. Tiles are block_n
    wide."""
    if lora is None:
        return (dummy,) * 5 + (1, 0, 0), dict(HAS_LORA=False, BLOCK_R=1, NUM_SEG=1, T_SPLITS=1, T_BLOCK=1, R_P2=1)
    t, slot_ids, b_stack, scales, ranks, segments, rank_bound = lora
    r = b_stack.shape[1]
    consts = dict(HAS_LORA=True, **delta_consts(t, r, segments, rank_bound))
    return (t, slot_ids, b_stack, scales, ranks, r, *segment_args(segments, block_n)), consts


def delta_consts(t: torch.Tensor, r: int, segments: tuple[int, ...], rank_bound: int) -> dict[str, int]:
    """`lora_delta_tile`'s constexprs for t [M, splits, G*R] of a stack of padded rank r."""
    block_r = expand_rank(rank_bound, r)
    return dict(BLOCK_R=block_r, NUM_SEG=len(segments) + 1, T_SPLITS=t.shape[1],
                T_BLOCK=triton.next_power_of_2(t.shape[1]), R_P2=triton.next_power_of_2(block_r))  # fmt: skip


def shrink_tile(shrink: LoraShrink | None, limit: int) -> int:
    """The K slice a fused shrink takes per program: its A tile (segments x rank bound x slice) holds at most
    SHRINK_TILE values; `limit` caps it (the op's own block)."""
    if shrink is None:
        return limit
    rows = triton.next_power_of_2(shrink.num_segments) * _shrink_rank(shrink)
    return max(16, min(limit, SHRINK_TILE // rows))


def shrink_args(shrink: LoraShrink | None, rows: int, splits: int, like: torch.Tensor) -> tuple[tuple, dict[str, Any]]:
    """A fused shrink's output t [rows, splits, G*R] fp32 (entries past the rank bound unwritten) with its kernel
    arguments (slot_ids, A, ranks, t, SEG_R) and constexprs (HAS_SHRINK, S_NUM_SEG, SEG_P2, RB); `like` fills
    the pointers without one."""
    if shrink is None:
        return (like,) * 4 + (1,), dict(HAS_SHRINK=False, S_NUM_SEG=1, SEG_P2=1, RB=R_CHUNK.value)
    slot_ids, a_stack, ranks, num_segments, _ = shrink
    r_total = a_stack.shape[1]
    t = torch.empty((rows, splits, r_total), dtype=torch.float32, device=like.device)
    consts = dict(HAS_SHRINK=True, S_NUM_SEG=num_segments, SEG_P2=triton.next_power_of_2(num_segments),
                  RB=_shrink_rank(shrink))  # fmt: skip
    return (slot_ids, a_stack, ranks, t, r_total // num_segments), consts


def _shrink_rank(shrink: LoraShrink) -> int:
    return bounded_rank(shrink.rank_bound, shrink.a_stack.shape[1] // shrink.num_segments)


def lora_shrink_triton(
    x: torch.Tensor, slot_ids: torch.Tensor, a_stack: torch.Tensor, ranks: torch.Tensor, num_segments: int = 1
) -> torch.Tensor:
    """Partial shrink sums t: [M, splits, G*R] fp32 (splits over K fill the GPU at small M)."""
    m, k = x.shape
    _, r_total, _ = a_stack.shape
    splits = max(1, min(MAX_SHRINK_SPLITS, triton.cdiv(k, SHRINK_BLOCK_K), triton.cdiv(64, max(m, 1))))
    k_per_split = triton.cdiv(triton.cdiv(k, splits), SHRINK_BLOCK_K) * SHRINK_BLOCK_K
    splits = triton.cdiv(k, k_per_split)
    t = torch.empty((m, splits, r_total), dtype=torch.float32, device=x.device)
    if m:
        _lora_shrink_kernel[(m, splits, triton.cdiv(r_total, R_CHUNK.value))](
            x, slot_ids, a_stack, ranks, t, k, r_total, r_total // num_segments, x.stride(0), k_per_split,
            BLOCK_K=SHRINK_BLOCK_K, num_warps=4,
        )  # fmt: skip
    return t


def lora_expand_triton(
    t: torch.Tensor,
    slot_ids: torch.Tensor,
    b_stack: torch.Tensor,
    scales: torch.Tensor,
    ranks: torch.Tensor,
    y: torch.Tensor,
    segments: tuple[int, ...] = (),
    rank_bound: int = 0,
) -> torch.Tensor:
    """y += scale_s * t_s @ B_s in place (y may be a column slice of a wider buffer); returns y."""
    m = t.shape[0]
    n, r = y.shape[1], b_stack.shape[1]
    assert y.stride(1) == 1, "y rows must be contiguous"
    block_m = min(4, triton.next_power_of_2(max(m, 1)))
    seg1, seg2 = segment_args(segments, EXPAND_BLOCK_N)
    if m:
        grid = (triton.cdiv(n, EXPAND_BLOCK_N), triton.cdiv(m, block_m))
        _lora_expand_kernel[grid](
            t, slot_ids, b_stack, scales, ranks, y, m, n, r, seg1, seg2, y.stride(0),
            BLOCK_M=block_m, BLOCK_N=EXPAND_BLOCK_N, **delta_consts(t, r, segments, rank_bound), num_warps=4,
        )  # fmt: skip
    return y


def lora_one_pass_triton(
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
    """y += scale_s * (x @ A_s^T) @ B_s in one launch, for at most ONE_PASS_MAX_ROWS rows; returns y."""
    m, k = x.shape
    n, r = y.shape[1], b_stack.shape[1]
    assert m <= ONE_PASS_MAX_ROWS and x.stride(1) == 1 and y.stride(1) == 1
    block_n = 2 * EXPAND_BLOCK_N if all(c % (2 * EXPAND_BLOCK_N) == 0 for c in segments) else EXPAND_BLOCK_N
    seg1, seg2 = segment_args(segments, block_n)
    if m:
        _lora_one_pass_kernel[(triton.cdiv(n, block_n), m)](
            x, slot_ids, a_stack, b_stack, scales, ranks, y, n, k, r, seg1, seg2, x.stride(0), y.stride(0),
            BLOCK_N=block_n, BLOCK_K=ONE_PASS_BLOCK_K, RB=bounded_rank(rank_bound, r), NUM_SEG=len(segments) + 1,
            num_warps=8,
        )  # fmt: skip
    return y
