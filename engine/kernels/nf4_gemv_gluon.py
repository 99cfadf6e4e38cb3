"""Gluon NF4 matmul for one row of x: the codes come from a byte table in shared memory, not from registers.

Each packed byte (two weights, k = 2j in its high nibble, 2j + 1 in its low one) indexes a 256-entry table of fp16
pairs (code[high], code[low]), which multiplies x's pair (x[2j], x[2j + 1]) on packed fp16 units. The table sits in
shared memory once per lane, [256 bytes, 32 lanes] int32 in rows of 256 bytes, so the 32 lanes of a warp always read
32 different banks: a lookup is one `prmt` (the byte above the lane's column offset) and one conflict-free
`ld.shared`, where the register table (nf4_lut.dot_program) needs about 5 integer instructions per byte. Each program
writes the 64 KB table once, so programs are persistent: each takes row tiles pid, pid + P, ... over all of K.

Layout per K step: packed int32 words (8 weights each), each thread 4 consecutive words of RPT rows (one 16-byte load
per row), with their x pairs (four 16-byte loads per thread) broadcast over the rows: [ROWS, WPS / 4, 4 / n, n, 4],
a lane's words in dots of n = WORDS_PER_DOT, a word's 4 bytes last. One PTX call (word_dot_asm) takes a dot's 4n
bytes (pack 4n), sums their products with x on packed fp16 units and returns the sum in fp32 in its first element;
the absmax of the 64-weight block (one per lane and row) scales it in fp32. PREFETCH loads each step's operands one
step ahead.
The inline PTX addresses the table through Triton's `global_smem` symbol: the table is the kernel's first shared
allocation, at offset 0; Triton's own scratch (the LoRA reductions) goes after it. tests/test_nf4_gemv_gluon.py checks
the results on the GPU against the reference.
A fused LoRA expand (o, down) loads the row's slot and t before the table is written, sums t once per program, and
reads each tile's B columns at the tile's start; no load waits for another on the way into the K loop.
"""

from __future__ import annotations

import functools

import torch
from triton.experimental import gluon
from triton.experimental.gluon import language as gl

from engine.kernels.lora_triton import expand_args
from engine.kernels.lora_types import LoraExpand
from engine.kernels.nf4_configs import Nf4Config

LANES = 32
TABLE_BYTES = 256
TABLE_SMEM = TABLE_BYTES * 2 * LANES * 4  # rows of 256 bytes, the first 128 used
RESERVED_SMEM = 1024  # the driver's share of each program's shared memory
SM_REGISTERS = 65536  # 32-bit registers per SM, sm_80 to sm_90
THREAD_REGISTERS = 128
_LANES = gl.constexpr(LANES)
_TABLE_BYTES = gl.constexpr(TABLE_BYTES)
_LOAD_F32 = gl.constexpr("ld.global.nc.f32 $0, [$1];")
_LANE_COLUMN = gl.constexpr("{ .reg .b32 l; mov.u32 l, %laneid; shl.b32 $0, l, 2; }")


@functools.cache
def word_dot_asm(words: int) -> str:
    """PTX for the dot product of `words` packed words with their x pairs, summed on packed fp16 units and returned
    in fp32 in the first of its 4 * words outputs. Operands past the outputs: each word's 4 copies, x's pairs of
    each word's bytes, the lane's column offset (lane * 4), each 4 * words. One prmt puts byte b of a word above the
    lane's offset: (byte << 8) | lane * 4, its table entry's address."""
    n = 4 * words
    word, pair, base = n, 2 * n, 3 * n
    regs = ", ".join(f"a{i}, c{i}" for i in range(n))
    body = [f"{{ .reg .b32 s, h, {regs}; .reg .b16 hl, hh; .reg .f32 fl, fh; mov.u32 s, global_smem;"]
    for i in range(n):
        body.append(f" prmt.b32 a{i}, ${word + i // 4 * 4}, ${base}, 0x55{i % 4}4; add.u32 a{i}, a{i}, s;")
    body += [f" ld.shared.b32 c{i}, [a{i}];" for i in range(n)]
    body.append(f" mul.rn.f16x2 h, c0, ${pair};")
    body += [f" fma.rn.f16x2 h, c{i}, ${pair + i}, h;" for i in range(1, n)]
    body.append(" mov.b32 {hl, hh}, h; cvt.f32.f16 fl, hl; cvt.f32.f16 fh, hh; add.f32 $0, fl, fh;")
    body += [f" mov.b32 ${i}, 0;" for i in range(1, n)]
    return "".join(body) + " }"


@functools.cache
def word_dot_constraints(words: int) -> str:
    return ",".join(["=r"] * 4 * words + ["r"] * 12 * words)


def step_layout(rows_per_thread: int, lanes_per_row: int, warps: int, words_per_dot: int) -> gl.BlockedLayout:
    """[ROWS, WPS // 4, 4 // n, n, 4] for n = words_per_dot: each thread RPT rows x 4 words (in dots of n words) x
    4 bytes, `lanes_per_row` lanes along a row's words."""
    return gl.BlockedLayout(
        size_per_thread=[rows_per_thread, 1, 4 // words_per_dot, words_per_dot, 4],
        threads_per_warp=[LANES // lanes_per_row, lanes_per_row, 1, 1, 1],
        warps_per_cta=[warps, 1, 1, 1, 1],
        order=[4, 3, 2, 1, 0],
    )


@gluon.jit
def _first(a, b):
    return a


@gluon.jit
def _nf4_gemv_kernel(
    x_ptr, q_ptr, absmax_ptr, table_ptr, y_ptr, t_ptr, slot_ptr, b_ptr, lora_scale_ptr, rank_ptr,
    N, K, k_words, num_tiles, lora_r, seg1, seg2,
    ROWS: gl.constexpr, WPS: gl.constexpr, L5: gl.constexpr, WARPS: gl.constexpr, PREFETCH: gl.constexpr,
    WORDS_PER_DOT: gl.constexpr, DOT_ASM: gl.constexpr, DOT_CONSTRAINTS: gl.constexpr, HAS_LORA: gl.constexpr,
    BLOCK_R: gl.constexpr, NUM_SEG: gl.constexpr, T_SPLITS: gl.constexpr, T_BLOCK: gl.constexpr, R_P2: gl.constexpr,
):  # fmt: skip
    words_layout: gl.constexpr = gl.SliceLayout(4, L5)  # [ROWS, G, U, WORDS_PER_DOT]: word (g * 4 + u * WPD + v)
    acc_layout: gl.constexpr = gl.SliceLayout(2, gl.SliceLayout(3, words_layout))  # [ROWS, G]
    G: gl.constexpr = WPS // 4
    U: gl.constexpr = 4 // WORDS_PER_DOT
    # t and B entries: segment g's rank r at g * R_P2 + r
    LORA_C: gl.constexpr = (1 if NUM_SEG == 1 else (2 if NUM_SEG == 2 else 4)) * R_P2
    lora: gl.constexpr = gl.BlockedLayout([1, 1], [1, 32], [1, WARPS], [0, 1])  # [LORA_C, ROWS]
    if HAS_LORA:  # the row's slot and t's partial sums: loads only, in flight while the table is written
        slot, t_parts = _lora_loads(slot_ptr, t_ptr, lora_r, BLOCK_R, NUM_SEG, T_SPLITS, T_BLOCK, R_P2, LORA_C, WARPS)
    # the byte table, one column per lane: [256, 32] int32, written once per program
    fill: gl.constexpr = gl.BlockedLayout([1, 4], [4, 8], [WARPS, 1], [1, 0])
    entry = gl.arange(0, _TABLE_BYTES, layout=gl.SliceLayout(1, fill))
    lane = gl.arange(0, _LANES, layout=gl.SliceLayout(0, fill))
    table = gl.load(table_ptr + gl.expand_dims(entry, 1) + gl.expand_dims(lane * 0, 0))
    smem = gl.allocate_shared_memory(gl.int32, [_TABLE_BYTES, 2 * _LANES], gl.SwizzledSharedLayout(1, 1, 1, [1, 0]))
    smem.slice(0, _LANES, dim=1).store(table)  # rows of 256 bytes: a byte's row offset is one prmt
    gl.thread_barrier()  # the PTX reads below are invisible to Triton's barrier analysis
    r = gl.arange(0, ROWS, layout=gl.SliceLayout(1, acc_layout))
    g = gl.arange(0, G, layout=gl.SliceLayout(0, acc_layout))
    w = gl.expand_dims(_offsets3(G, U, WORDS_PER_DOT, 4, WORDS_PER_DOT, 1, gl.SliceLayout(0, words_layout)), 0)
    base = gl.inline_asm_elementwise(_LANE_COLUMN, "=r,r", [gl.zeros([ROWS, G, U, WORDS_PER_DOT, 4], gl.int32,
                                                                      layout=L5)],
                                     dtype=gl.int32, is_pure=True, pack=1)  # fmt: skip
    if HAS_LORA:  # t summed once per program; the rank and scale (read now) apply after the K loop
        t_row = gl.convert_layout(gl.sum(t_parts, axis=0), gl.SliceLayout(1, lora))
        active = slot >= 0
        slot = gl.maximum(slot, 0)
        rank = gl.where(active, gl.load(rank_ptr + slot), 0)
        lora_scale = gl.load(lora_scale_ptr + slot)
    x_offs = _offsets4(G, U, WORDS_PER_DOT, 4, 16, WORDS_PER_DOT * 4, 4, 1, gl.SliceLayout(0, L5))  # pairs of words
    for tile in range(gl.program_id(0), num_tiles, gl.num_programs(0)):
        rows = tile * ROWS + r
        word_ptrs = q_ptr + gl.expand_dims(gl.expand_dims(gl.expand_dims(rows * k_words, 1), 2), 3) + w
        scale_ptrs = absmax_ptr + gl.expand_dims(rows * (K // 64), 1) + gl.expand_dims(g // 2, 0)  # [ROWS, G]
        if HAS_LORA:  # the tile's B columns first: their loads overlap the first step's
            b = _lora_b(slot, active, b_ptr, tile * ROWS, N, lora_r, seg1, seg2, ROWS, BLOCK_R, NUM_SEG, R_P2, LORA_C,
                        lora)  # fmt: skip
        acc = gl.zeros([ROWS, G], gl.float32, layout=acc_layout)
        if PREFETCH:  # each step's operands are loaded one step ahead
            words, scale, xt = _step_operands(word_ptrs, scale_ptrs, x_ptr + x_offs, 0)
            for k0 in range(WPS, k_words, WPS):
                next_words, next_scale, next_xt = _step_operands(word_ptrs, scale_ptrs, x_ptr + x_offs, k0)
                acc += _step_dots(words, xt, base, DOT_ASM, DOT_CONSTRAINTS) * scale
                words, scale, xt = next_words, next_scale, next_xt
            acc += _step_dots(words, xt, base, DOT_ASM, DOT_CONSTRAINTS) * scale
        else:
            for k0 in range(0, k_words, WPS):
                words, scale, xt = _step_operands(word_ptrs, scale_ptrs, x_ptr + x_offs, k0)
                acc += _step_dots(words, xt, base, DOT_ASM, DOT_CONSTRAINTS) * scale
        out = gl.sum(acc, axis=1)  # [ROWS]
        if HAS_LORA:
            c = gl.arange(0, t_row.shape[0], layout=gl.SliceLayout(1, lora))
            t_use = gl.where(c % R_P2 < rank, t_row, 0.0) * lora_scale  # past the rank: nothing, NaN included
            out += gl.convert_layout(gl.sum(gl.expand_dims(t_use, 1) * b, axis=0), out.type.layout)
        gl.store(y_ptr + rows, out.to(gl.float16))
    smem._keep_alive()


@gluon.jit
def _lora_loads(slot_ptr, t_ptr, R, BLOCK_R: gl.constexpr, NUM_SEG: gl.constexpr, T_SPLITS: gl.constexpr,
                T_BLOCK: gl.constexpr, R_P2: gl.constexpr, C: gl.constexpr, WARPS: gl.constexpr):  # fmt: skip
    """(slot, t's partial sums [T_BLOCK, C] fp32) of the row, column g * R_P2 + r for segment g's rank r:
    no load depends on another, so none waits."""
    layout: gl.constexpr = gl.BlockedLayout([1, 1], [32, 1], [WARPS, 1], [1, 0])
    i = gl.arange(0, T_BLOCK, layout=gl.SliceLayout(1, layout))
    c = gl.arange(0, C, layout=gl.SliceLayout(0, layout))
    g, r = c // R_P2, c % R_P2
    ptrs = t_ptr + gl.expand_dims(i * (NUM_SEG * R), 1) + gl.expand_dims(g * R + r, 0)
    in_t = gl.expand_dims(i < T_SPLITS, 1) & gl.expand_dims((g < NUM_SEG) & (r < BLOCK_R), 0)
    return gl.load(slot_ptr), gl.load(ptrs, mask=in_t, other=0.0)


@gluon.jit
def _lora_b(slot, active, b_ptr, row0, N, R, seg1, seg2, ROWS: gl.constexpr, BLOCK_R: gl.constexpr,
            NUM_SEG: gl.constexpr, R_P2: gl.constexpr, C: gl.constexpr, LAYOUT: gl.constexpr):  # fmt: skip
    """[C, ROWS] fp32 in LAYOUT: B_slot[r, row] of rows row0.. in the entries of their segment, zero in
    the others and without an adapter."""
    c = gl.arange(0, C, layout=gl.SliceLayout(1, LAYOUT))
    rows = row0 + gl.arange(0, ROWS, layout=gl.SliceLayout(0, LAYOUT))
    seg = 0
    if NUM_SEG > 1:
        seg += (row0 >= seg1).to(gl.int32)
    if NUM_SEG > 2:
        seg += (row0 >= seg2).to(gl.int32)
    g, r = c // R_P2, c % R_P2
    ptrs = b_ptr + slot * (N * R) + gl.expand_dims(r * N, 1) + gl.expand_dims(rows, 0)
    use = gl.expand_dims((g == seg) & (r < BLOCK_R) & active, 1) & gl.expand_dims(rows < N, 0)
    return gl.load(ptrs, mask=use, other=0.0).to(gl.float32)


@gluon.jit
def _offsets3(A: gl.constexpr, B: gl.constexpr, C: gl.constexpr, sa, sb, sc, layout: gl.constexpr):
    # [A, B, C] in layout: a * sa + b * sb + c * sc
    a = gl.arange(0, A, layout=gl.SliceLayout(1, gl.SliceLayout(2, layout)))
    b = gl.arange(0, B, layout=gl.SliceLayout(0, gl.SliceLayout(2, layout)))
    c = gl.arange(0, C, layout=gl.SliceLayout(0, gl.SliceLayout(1, layout)))
    ab = gl.expand_dims(a * sa, 1) + gl.expand_dims(b * sb, 0)
    return gl.expand_dims(ab, 2) + gl.expand_dims(gl.expand_dims(c * sc, 0), 1)


@gluon.jit
def _offsets4(A: gl.constexpr, B: gl.constexpr, C: gl.constexpr, D: gl.constexpr, sa, sb, sc, sd,
              layout: gl.constexpr):  # fmt: skip
    # [A, B, C, D] in layout: a * sa + b * sb + c * sc + d * sd
    abc = _offsets3(A, B, C, sa, sb, sc, gl.SliceLayout(3, layout))
    d = gl.arange(0, D, layout=gl.SliceLayout(0, gl.SliceLayout(1, gl.SliceLayout(2, layout))))
    return gl.expand_dims(abc, 3) + gl.expand_dims(gl.expand_dims(gl.expand_dims(d * sd, 0), 1), 2)


@gluon.jit
def _step_operands(word_ptrs, scale_ptrs, x_ptrs, k0):
    # the step at word k0: words [ROWS, G, U, WPD] int32, their absmax [ROWS, G], x's pairs [G, U, WPD, 4]
    words = gl.load(word_ptrs + k0)
    scale = gl.inline_asm_elementwise(_LOAD_F32, "=r,l", [(scale_ptrs + k0 // 8).to(gl.int64, bitcast=True)],
                                      dtype=gl.float32, is_pure=True, pack=1)  # fmt: skip
    return words, scale, gl.load(x_ptrs + k0 * 4)


@gluon.jit
def _step_dots(words, xt, base, DOT_ASM: gl.constexpr, DOT_CONSTRAINTS: gl.constexpr):
    # [ROWS, G] fp32: each thread's 4 words' dot product with their x pairs, in dots of words.shape[3] words
    dots = gl.inline_asm_elementwise(
        DOT_ASM,
        DOT_CONSTRAINTS,
        [gl.expand_dims(words, 4), gl.expand_dims(xt, 0), base],
        dtype=gl.float32,
        is_pure=True,
        pack=4 * words.shape[3],
    )  # [ROWS, G, U, WPD, 4], each dot in its first element
    return gl.sum(gl.reduce(gl.reduce(dots, 4, _first), 3, _first), axis=2)


def byte_table(code: torch.Tensor) -> torch.Tensor:
    """int32 [256]: for byte b the fp16 pair (code[b >> 4] low, code[b & 15] high), the codes of k = 2j, 2j + 1."""
    byte = torch.arange(TABLE_BYTES, device=code.device)
    pairs = torch.stack((code[byte >> 4], code[byte & 0xF]), dim=-1).to(torch.float16).contiguous()  # [256, 2]
    return pairs.view(torch.int32).reshape(TABLE_BYTES)


def smem_programs(device: torch.device) -> int:
    """How many programs fit on one SM by shared memory: each table takes TABLE_SMEM bytes."""
    return torch.cuda.get_device_properties(device).shared_memory_per_multiprocessor // (TABLE_SMEM + RESERVED_SMEM)


def register_programs(warps: int) -> int:
    """How many programs of `warps` warps fit on one SM by registers, at up to THREAD_REGISTERS a thread (o's and
    down's 8-warp tiles compile to 98-127; gate_up's 4-warp tile takes 168, and its 3 programs still fit in 64,512). A
    persistent program that does not fit waits for a whole program to finish."""
    return SM_REGISTERS // (THREAD_REGISTERS * LANES * warps)


def nf4_matmul_gemv(
    x: torch.Tensor, qweight: torch.Tensor, absmax: torch.Tensor, table: torch.Tensor, n: int, k: int, cfg: Nf4Config,
    programs: int, lora: LoraExpand | None = None,
) -> torch.Tensor:  # fmt: skip
    """y [1, N] fp16 = x [1, K] fp16 @ W^T (+ the fused LoRA expand) for absmax blocks of 64; `table` from byte_table,
    `programs` the persistent grid's size."""
    lanes_per_row = cfg.block_k // 32
    rows_per_thread = cfg.block_n * lanes_per_row // (LANES * cfg.num_warps)
    assert x.shape[0] == 1 and x.stride(1) == 1 and n % cfg.block_n == 0 and k % cfg.block_k == 0, (cfg, x.shape, n, k)
    if x.data_ptr() % 16:  # x is read as int32 fp16 pairs, 16 bytes at a time
        x = x.clone(memory_format=torch.contiguous_format)
    y = torch.empty((1, n), dtype=torch.float16, device=x.device)
    num_tiles = n // cfg.block_n
    lora_args, lora_consts = expand_args(lora, y, cfg.block_n)
    _nf4_gemv_kernel[(min(programs, num_tiles),)](
        x.view(torch.int32), qweight.reshape(-1).view(torch.int32), absmax, table, y, *lora_args[:5],
        n, k, k // 8, num_tiles, *lora_args[5:], ROWS=cfg.block_n, WPS=cfg.block_k // 8,
        L5=step_layout(rows_per_thread, lanes_per_row, cfg.num_warps, cfg.words_per_dot), WARPS=cfg.num_warps,
        PREFETCH=cfg.num_stages == 2, WORDS_PER_DOT=cfg.words_per_dot, DOT_ASM=word_dot_asm(cfg.words_per_dot),
        DOT_CONSTRAINTS=word_dot_constraints(cfg.words_per_dot), **lora_consts, num_warps=cfg.num_warps,
    )  # fmt: skip
    return y
