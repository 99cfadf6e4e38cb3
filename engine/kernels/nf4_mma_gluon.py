"""Gluon NF4 matmul for up to 16 rows of x (picked for 2-8): the weights go from registers into `mma.sync`.

The weight is the MMA's first operand (y^T = W x^T), x the second, its rows the MMA's N (8 or 16). Each lane
loads whole packed int32 words (8 weights) in the layout of the first operand with k_width 8, which holds 8
consecutive k of a row per lane: inside each 128-k step the kernel's k order is permuted (logical k' = 32j + 8t
+ i holds physical k = 32t + 8j + i, t = lane % 4), so lane t's four words are contiguous (one 16-byte load per
row) and x is read with the same permutation. One PTX call per word (nf4_lut.pairs_program) looks its 8 codes
up, scales them by the block's absmax in fp16 and returns them as 4 fp16 pairs; `join`s, a `reshape` and a
no-op `mov` make them fp16 elements in the operand's layout, so the conversion to the MMA operand moves nothing
(no shared memory). Each warp holds T row tiles of 16 that share its x fragment. Split-K partials go through a
workspace and an atomic ticket per tile, summed in a fixed order by the tile's last program (deterministic). A fused
LoRA expand is shared by the splits, a few ranks each: it starts each split's partial, its loads in flight with the
first step's, so it adds little to any program's path.
"""

from __future__ import annotations

import torch
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.ampere import mma_v2

from engine.kernels.lora_triton import expand_args
from engine.kernels.lora_types import LoraExpand
from engine.kernels.nf4_configs import Nf4Config

STEP = 128  # k per step: 16 words per row, 4 per lane
STEP_K = gl.constexpr(STEP)
_LOAD_F32 = gl.constexpr("ld.global.nc.f32 $0, [$1];")
_PAIRS_CONSTRAINTS = gl.constexpr("=r,=r,=r,=r,r,r,r,r,r,r")
_MOV = gl.constexpr("mov.b32 $0, $1;")
_LOAD_V4 = gl.constexpr("ld.global.nc.v4.b32 {$0, $1, $2, $3}, [$4];")


def word_layout(warps: int, tiles: int) -> gl.DistributedLinearLayout:
    """[16 * tiles * warps rows, 16 words]: lane (g, t) holds words 4t..4t+3 of rows g and g + 8 of each of its
    warp's row tiles, in the order of mma v2's first operand (k_width 8) after the k permutation."""
    rows = 16 * tiles * warps
    return gl.DistributedLinearLayout(
        reg_bases=[[0, 1], [0, 2], [8, 0]] + [[16 * warps << i, 0] for i in range(tiles.bit_length() - 1)],
        lane_bases=[[0, 4], [0, 8], [1, 0], [2, 0], [4, 0]],
        warp_bases=[[16 << i, 0] for i in range(warps.bit_length() - 1)],
        block_bases=[],
        shape=[rows, 16],
    )


def x_layout(warps: int, nx: int) -> gl.DistributedLinearLayout:
    """[nx, 64] int32 fp16 pairs of x's rows per step: lane (n, t) holds pairs 16t..16t+15 of row n (physical k
    32t..32t+31, four 16-byte loads), every warp the same."""
    return gl.DistributedLinearLayout(
        reg_bases=[[0, 1], [0, 2], [0, 4], [0, 8]] + ([[8, 0]] if nx == 16 else []),
        lane_bases=[[0, 16], [0, 32], [1, 0], [2, 0], [4, 0]],
        warp_bases=[[0, 0]] * (warps.bit_length() - 1),
        block_bases=[],
        shape=[nx, 64],
    )


@gluon.jit
def _nf4_mma_kernel(
    x_ptr, q_ptr, absmax_ptr, table_ptr, y_ptr, ws_ptr, ticket_ptr,
    t_ptr, slot_ptr, b_ptr, lora_scale_ptr, rank_ptr,
    M, N, K, k_words, stride_xm, stride_ym, steps_per_split, split_k, lora_r, seg1, seg2,
    ROWS: gl.constexpr, NX: gl.constexpr, WORDS: gl.constexpr, X: gl.constexpr, WARPS: gl.constexpr, IS_SPLIT: gl.constexpr,
    PAIRS_ASM: gl.constexpr, PREFETCH: gl.constexpr, HAS_LORA: gl.constexpr, BLOCK_R: gl.constexpr,
    NUM_SEG: gl.constexpr, T_SPLITS: gl.constexpr, T_BLOCK: gl.constexpr, R_P2: gl.constexpr, RANKS: gl.constexpr,
):  # fmt: skip
    mma: gl.constexpr = gl.NVMMADistributedLayout(version=[2, 0], warps_per_cta=[WARPS, 1], instr_shape=[16, 8])
    a_layout: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=mma, k_width=8)
    b_layout: gl.constexpr = gl.DotOperandLayout(operand_index=1, parent=mma, k_width=8)
    pid_n = gl.program_id(0)
    pid_k = gl.program_id(1)
    row0 = pid_n * ROWS
    # the weight words: [ROWS, 16] per step
    rows = (row0 + gl.arange(0, ROWS, layout=gl.SliceLayout(1, WORDS))) % N
    offs_w = gl.arange(0, 16, layout=gl.SliceLayout(0, WORDS))
    word_ptrs = q_ptr + gl.expand_dims(rows * k_words, 1) + gl.expand_dims(offs_w, 0)  # [ROWS, 16]
    scale_ptrs = absmax_ptr + gl.expand_dims(rows * (K // 64), 1) + gl.expand_dims(offs_w // 8, 0)
    same = gl.expand_dims(offs_w * 0, 0) + gl.expand_dims(rows * 0, 1)
    v0 = gl.load(table_ptr + same)
    v1 = gl.load(table_ptr + 1 + same)
    v2 = gl.load(table_ptr + 2 + same)
    v3 = gl.load(table_ptr + 3 + same)
    # x: [NX, 64] fp16 pairs per step in physical k order (made the second operand in _step); rows past M repeat
    # row M - 1, whose products are never stored
    nn = gl.arange(0, NX, layout=gl.SliceLayout(1, X))
    x_ptrs = (
        x_ptr
        + gl.expand_dims(gl.minimum(nn, M - 1) * stride_xm, 1)
        + gl.expand_dims(gl.arange(0, 64, layout=gl.SliceLayout(0, X)), 0)
    )
    # steps, not k, count the loop, so that every step's loads are known to be 16-byte aligned
    s_begin = pid_k * steps_per_split
    if PREFETCH:  # each step's operands are loaded one step ahead
        words, scale, xt = _step_operands(word_ptrs, scale_ptrs, x_ptrs, s_begin * STEP_K)
    if HAS_LORA:  # each split's partial starts with the LoRA expand of its RANKS ranks, loaded beside the first step's
        acc = _lora_delta(t_ptr, slot_ptr, rank_ptr, lora_scale_ptr, b_ptr, row0, pid_k * RANKS, M, N, lora_r, seg1,
                          seg2, ROWS, NX, BLOCK_R, RANKS, NUM_SEG, T_SPLITS, T_BLOCK, mma)  # fmt: skip
    else:
        acc = gl.zeros([ROWS, NX], gl.float32, layout=mma)
    if PREFETCH:
        for step in range(s_begin + 1, s_begin + steps_per_split):
            next_words, next_scale, next_xt = _step_operands(word_ptrs, scale_ptrs, x_ptrs, step * STEP_K)
            acc = _step(words, scale, xt, v0, v1, v2, v3, acc, a_layout, b_layout, ROWS, PAIRS_ASM)
            words, scale, xt = next_words, next_scale, next_xt
        acc = _step(words, scale, xt, v0, v1, v2, v3, acc, a_layout, b_layout, ROWS, PAIRS_ASM)
    else:
        for step in range(s_begin, s_begin + steps_per_split):
            words, scale, xt = _step_operands(word_ptrs, scale_ptrs, x_ptrs, step * STEP_K)
            acc = _step(words, scale, xt, v0, v1, v2, v3, acc, a_layout, b_layout, ROWS, PAIRS_ASM)
    out_rows = row0 + gl.arange(0, ROWS, layout=gl.SliceLayout(1, mma))
    out_m = gl.arange(0, NX, layout=gl.SliceLayout(0, mma))
    if IS_SPLIT:
        tile_offs = gl.expand_dims(gl.arange(0, ROWS, layout=gl.SliceLayout(1, mma)) * NX, 1) + gl.expand_dims(out_m, 0)
        tile_ws = ws_ptr + pid_n * split_k * (ROWS * NX)
        gl.store(tile_ws + pid_k * (ROWS * NX) + tile_offs, acc)
        gl.thread_barrier()
        ticket = gl.atomic_add(ticket_ptr + pid_n, 1, sem="acq_rel", scope="gpu")
        if ticket == split_k - 1:
            total = gl.zeros([ROWS, NX], gl.float32, layout=mma)
            for s in range(split_k):
                total += gl.load(tile_ws + s * (ROWS * NX) + tile_offs, cache_modifier=".cg")
            _store(total, y_ptr, out_rows, out_m, M, N, stride_ym)
            gl.atomic_xchg(ticket_ptr + pid_n, 0)
    else:
        _store(acc, y_ptr, out_rows, out_m, M, N, stride_ym)


@gluon.jit
def _step(words, scale, xt, v0, v1, v2, v3, acc, a_layout: gl.constexpr, b_layout: gl.constexpr, ROWS: gl.constexpr,
          PAIRS_ASM: gl.constexpr):  # fmt: skip
    # acc [ROWS, NX] += the step's weights (looked up, scaled, in the first operand's layout) x its x
    p0, p1, p2, p3 = gl.inline_asm_elementwise(PAIRS_ASM, _PAIRS_CONSTRAINTS, [words, scale, v0, v1, v2, v3],
                                               dtype=(gl.int32, gl.int32, gl.int32, gl.int32), is_pure=True,
                                               pack=1)  # fmt: skip
    pairs = gl.reshape(gl.join(gl.join(p0, p2), gl.join(p1, p3)), [ROWS, 64])  # pair b of word w at 4w + b
    a = gl.convert_layout(_logical_k(_as_fp16(pairs)), a_layout, assert_trivial=True)
    b = gl.convert_layout(gl.permute(_logical_k(_as_fp16(xt)), [1, 0]), b_layout, assert_trivial=True)
    return mma_v2(a, b, acc)


@gluon.jit
def _as_fp16(pairs):
    # [R, C] int32 fp16 pairs -> [R, 2C] fp16, no data movement: each pair duplicated, then one no-op mov per pair
    r: gl.constexpr = pairs.shape[0]
    c: gl.constexpr = pairs.shape[1]
    dup = gl.reshape(gl.join(pairs, pairs), [r, 2 * c])
    return gl.inline_asm_elementwise(_MOV, "=r,r,r", [dup], dtype=gl.float16, is_pure=True, pack=2)


@gluon.jit
def _logical_k(t):
    # [R, 128] in physical k order -> the same registers indexed by k' (physical 32t + 8j + i is k' = 32j + 8t + i)
    r: gl.constexpr = t.shape[0]
    return gl.reshape(gl.permute(gl.reshape(t, [r, 4, 4, 8]), [0, 2, 1, 3]), [r, STEP_K])


@gluon.jit
def _step_operands(word_ptrs, scale_ptrs, x_ptrs, k0):
    # the step at k0: words [ROWS, 16] int32, their absmax [ROWS, 16] fp32 (one read per block and lane), x
    words = gl.load(word_ptrs + k0 // 8)
    scale = gl.inline_asm_elementwise(_LOAD_F32, "=r,l", [(scale_ptrs + k0 // 64).to(gl.int64, bitcast=True)],
                                      dtype=gl.float32, is_pure=True, pack=1)  # fmt: skip
    # x: [NX, 64] int32 fp16 pairs in physical k order, 16-byte loads (a plain load of this layout got 4-byte ones)
    xt = gl.inline_asm_elementwise(_LOAD_V4, "=r,=r,=r,=r,l,l,l,l", [(x_ptrs + k0 // 2).to(gl.int64, bitcast=True)],
                                   dtype=gl.int32, is_pure=True, pack=4)  # fmt: skip
    return words, scale, xt


@gluon.jit
def _lora_delta(t_ptr, slot_ptr, rank_ptr, scale_ptr, b_ptr, row0, r0, M, N, R, seg1, seg2, ROWS: gl.constexpr,
                NX: gl.constexpr, BLOCK_R: gl.constexpr, RANKS: gl.constexpr, NUM_SEG: gl.constexpr,
                T_SPLITS: gl.constexpr, T_BLOCK: gl.constexpr, LAYOUT: gl.constexpr):  # fmt: skip
    """[ROWS, NX] in LAYOUT: the part of ranks r0 .. r0 + RANKS - 1 in scale_m * t_m[:rank_m] . B_s[:rank_m, row],
    column m of x, s its slot (lora_triton.lora_delta_tile's math); zero for columns without an adapter. t[m, :,
    g*R + r] (g the segment of row0) is summed over its T_SPLITS partial sums, in LAYOUT's columns."""
    rows = row0 + gl.arange(0, ROWS, layout=gl.SliceLayout(1, LAYOUT))
    cols = gl.arange(0, NX, layout=gl.SliceLayout(0, LAYOUT))
    slots = gl.load(slot_ptr + cols, mask=cols < M, other=-1)
    active = slots >= 0
    slots = gl.maximum(slots, 0)
    b_rows = b_ptr + gl.expand_dims(slots * (N * R), 0) + gl.expand_dims(rows, 1)  # [ROWS, NX]
    b_in = gl.expand_dims(rows < N, 1) & gl.expand_dims(active, 0)
    seg = 0
    if NUM_SEG > 1:
        seg += (row0 >= seg1).to(gl.int32)
    if NUM_SEG > 2:
        seg += (row0 >= seg2).to(gl.int32)
    i = gl.expand_dims(gl.arange(0, T_BLOCK, layout=gl.SliceLayout(1, LAYOUT)), 1)  # [TB, 1]
    t_rows = t_ptr + (gl.expand_dims(cols, 0) * T_SPLITS + i) * (NUM_SEG * R) + seg * R  # [TB, NX]
    t_in = (i < T_SPLITS) & gl.expand_dims(cols < M, 0)
    rank = gl.load(rank_ptr + slots, mask=active, other=0)
    delta = gl.zeros([ROWS, NX], gl.float32, layout=LAYOUT)
    for j in gl.static_range(RANKS):
        r = r0 + j
        b_r = gl.load(b_rows + r * N, mask=b_in & (r < BLOCK_R), other=0.0)  # [ROWS, NX]
        t_r = gl.sum(gl.load(t_rows + r, mask=t_in & (r < BLOCK_R), other=0.0), axis=0)  # [NX]
        delta += gl.expand_dims(gl.where(r < rank, t_r, 0.0), 0) * b_r.to(gl.float32)
    return delta * gl.expand_dims(gl.load(scale_ptr + slots, mask=active, other=0.0), 0)


@gluon.jit
def _store(acc, y_ptr, out_rows, out_m, M, N, stride_ym):
    # acc: [ROWS, NX] = y^T tile
    ptrs = y_ptr + gl.expand_dims(out_m * stride_ym, 0) + gl.expand_dims(out_rows, 1)
    mask = gl.expand_dims(out_m < M, 0) & gl.expand_dims(out_rows < N, 1)
    gl.store(ptrs, acc.to(gl.float16), mask=mask)


def nf4_matmul_mma(
    x: torch.Tensor, qweight: torch.Tensor, absmax: torch.Tensor, table: torch.Tensor, pairs_asm: str, n: int, k: int,
    tickets: torch.Tensor, cfg: Nf4Config, lora: LoraExpand | None = None,
) -> torch.Tensor:  # fmt: skip
    """y [M, N] fp16 = x [M, K] fp16 @ W^T (+ the fused LoRA expand) for M <= cfg.block_m, absmax blocks of 64;
    `table`: the register table's words (nf4_triton.lut_words), `tickets`: the split-K ticket buffer (zeros, reset
    after each use)."""
    m = x.shape[0]
    assert cfg.gluon and 1 <= m <= cfg.block_m and k % (STEP * cfg.split_k) == 0 and x.stride(1) == 1, (cfg, m, k)
    if x.stride(0) % 8 or x.data_ptr() % 16:  # x is read as int32 fp16 pairs, 16 bytes at a time
        x = x.clone(memory_format=torch.contiguous_format)
    y = torch.empty((m, n), dtype=torch.float16, device=x.device)
    grid = (-(-n // cfg.block_n), cfg.split_k)
    assert grid[0] <= tickets.numel(), "too many split-K tiles for the ticket buffer"
    tile = cfg.block_n * cfg.block_m
    ws = torch.empty((grid[0] * cfg.split_k * tile,), dtype=torch.float32, device=x.device) if cfg.split_k > 1 else y
    lora_args, lora_consts = expand_args(lora, y, cfg.block_n)
    tiles = cfg.block_n // (16 * cfg.num_warps)
    _nf4_mma_kernel[grid](
        x.view(torch.int32), qweight.reshape(-1).view(torch.int32), absmax, table, y, ws, tickets, *lora_args[:5],
        m, n, k, k // 8, x.stride(0) // 2, y.stride(0), k // (STEP * cfg.split_k), cfg.split_k, *lora_args[5:],
        ROWS=cfg.block_n, NX=cfg.block_m, WORDS=word_layout(cfg.num_warps, tiles), X=x_layout(cfg.num_warps, cfg.block_m),
        WARPS=cfg.num_warps, IS_SPLIT=cfg.split_k > 1, PAIRS_ASM=pairs_asm, PREFETCH=cfg.num_stages == 2,
        **lora_consts, RANKS=-(-lora_consts["BLOCK_R"] // cfg.split_k), num_warps=cfg.num_warps,
    )  # fmt: skip
    return y
