"""Triton NF4 matmul for small M (decode), reading bitsandbytes' packed layout directly.

Each program owns a [BLOCK_M, BLOCK_N] output tile and a slice of K (split-K). Per K step it loads the
packed bytes of BLOCK_K / GROUP absmax blocks of BLOCK_N rows once.
- One row (use_dot False): the bytes as int32 words of 8 weights, a [BLOCK_N, BLOCK_K / 8] tile per step whose
  rows are contiguous, so each warp's loads cover whole 128-byte lines. Lookup 4 turns each word into codes with
  the register table of nf4_lut.py and multiplies them with x on packed fp16 units in the same call
  (nf4_lut.dot_program); partial sums stay in the words' layout, scaled by their absmax in fp32. Its tuned tiles
  take a few rows over all of K (no split).
- More rows (use_dot): lookup 4 turns each block's bytes into fp16 codes with the register table and multiplies
  them on tensor cores, the weight tile as the first operand (swap_ab), one dot per block scaled by its absmax in
  fp32. Lookups 1 and 3 read the 16-entry table from memory (L1-resident) into a [BLOCK_N, blocks, 32] tile and
  keep even and odd k apart, multiplied with the even and odd columns of x.
Lookup 0 is the interpreter's: plain gathers where the GPU runs inline PTX.
Where Gluon runs (`gluon_ready`), 2-8 rows go to nf4_mma_gluon.py's register-fed MMA tile instead (a config with
gluon=True, picked from nf4_configs.TUNED_MMA), and where two 64 KB tables fit in an SM's shared memory
(`gemv_ready`) one row goes to nf4_gemv_gluon.py's byte-table tile (nf4_configs.TUNED_GEMV).
Split-K partials go to a workspace; the last program to finish a tile (an atomic ticket per
tile, reset by that program) sums them in a fixed order, so results are deterministic. The fused LoRA expand goes
into the first split's partial.
No host syncs and fixed-size allocations only: CUDA-graph capturable once the ticket buffer exists
(call once before capture, as any warm-up does).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import TypeVar

import torch
import triton
import triton.language as tl

from engine.kernels.lora_triton import expand_args, lora_delta_tile
from engine.kernels.lora_types import LoraExpand
from engine.kernels.nf4_configs import Nf4Config, pick_config
from engine.kernels.nf4_lut import CONSTRAINTS, DOT_CONSTRAINTS, dot_asm, lut_asm, pairs_asm, register_words

INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"  # the CPU interpreter cannot run inline PTX
TICKETS = 1 << 16
_tickets: dict[torch.device, torch.Tensor] = {}
_num_sms: dict[torch.device, int] = {}
_gluon_ready: dict[torch.device, bool] = {}
_gemv_programs: dict[torch.device, int] = {}  # programs of the Gluon one-row tile resident per SM (0: not run)
_code_derived: dict[tuple[str, torch.device, int], object] = {}
T = TypeVar("T")
logger = logging.getLogger(__name__)


_NIBBLE_LOOKUP = tl.constexpr("{ .reg .b64 a; mad.wide.u32 a, $1, 4, $2; ld.global.nc.f32 $0, [a]; }")
_DOT_CONSTRAINTS = tl.constexpr(DOT_CONSTRAINTS)
_LOAD_F32 = tl.constexpr("ld.global.nc.f32 $0, [$1];")
_BYTE_LOOKUP = tl.constexpr("{ .reg .b64 a; mad.wide.u32 a, $2, 8, $3; ld.global.nc.v2.f32 {$0, $1}, [a]; }")


@triton.jit
def _lookup_pairs(code_ptr, packed, LOOKUP: tl.constexpr):
    """(code[high nibble], code[low nibble]) of each packed byte, fp32.

    LOOKUP 0: tl.load gathers (the Triton interpreter's path). Triton gives a gather load its own
    register layout and converts the whole tile through shared memory to get there. LOOKUP 1 and 3 read
    the table with inline PTX instead, an elementwise op, so the tile keeps the packed bytes' layout:
    1 reads code[nibble] twice per byte; 3 reads one 8-byte pair per byte from a 256-entry table of
    (code[high], code[low]) (`code_ptr` then points at that table, see byte_pair_table): half the loads
    and address arithmetic."""
    if LOOKUP == 0:
        return tl.load(code_ptr + (packed >> 4).to(tl.int32)), tl.load(code_ptr + (packed & 0xF).to(tl.int32))
    base = tl.zeros_like(packed).to(tl.int64) + code_ptr.to(tl.int64, bitcast=True)
    if LOOKUP == 3:
        return tl.inline_asm_elementwise(_BYTE_LOOKUP, "=r,=r,r,l", [packed.to(tl.int32), base],
                                         dtype=(tl.float32, tl.float32), is_pure=True, pack=1)  # fmt: skip
    if LOOKUP == 1:
        high = tl.inline_asm_elementwise(_NIBBLE_LOOKUP, "=r,r,l", [(packed >> 4).to(tl.int32), base],
                                         dtype=tl.float32, is_pure=True, pack=1)  # fmt: skip
        low = tl.inline_asm_elementwise(_NIBBLE_LOOKUP, "=r,r,l", [(packed & 0xF).to(tl.int32), base],
                                        dtype=tl.float32, is_pure=True, pack=1)  # fmt: skip
        return high, low


@triton.jit
def _group_tile(q_ptr, absmax_ptr, code_ptr, rows, g0, K, G: tl.constexpr, HALF: tl.constexpr,
                LOOKUP: tl.constexpr):  # fmt: skip
    """NF4 values of blocks g0..g0+G-1 of `rows`, split by parity of k: (even, odd), each fp32
    [BLOCK_N, G, HALF], and the blocks' absmax [BLOCK_N, G, 1]. Byte j of a block holds k = 2j (high
    nibble) and k = 2j + 1 (low nibble)."""
    offs_g = g0 + tl.arange(0, G)
    offs_j = tl.arange(0, HALF)
    packed = tl.load(q_ptr + rows[:, None, None] * (K // 2) + offs_g[None, :, None] * HALF + offs_j[None, None, :])
    scale = tl.load(absmax_ptr + rows[:, None, None] * (K // (2 * HALF)) + offs_g[None, :, None])  # [BN, G, 1]
    even, odd = _lookup_pairs(code_ptr, packed, LOOKUP)
    return even, odd, scale


@triton.jit
def _load_like(ptrs, LOOKUP: tl.constexpr):
    """fp32 values at `ptrs` in the layout of the tensor they are combined with: a tl.load gets a layout of its
    own (set by its addresses' contiguity) and a conversion to the consumer's through shared memory. An inline
    PTX load is elementwise, and equal addresses in one thread are read once (the calls are pure). LOOKUP 0 (the
    interpreter, which cannot run inline PTX) uses tl.load."""
    if LOOKUP == 0:
        return tl.load(ptrs)
    else:
        return tl.inline_asm_elementwise(_LOAD_F32, "=r,l", [ptrs.to(tl.int64, bitcast=True)], dtype=tl.float32,
                                         is_pure=True, pack=1)  # fmt: skip


@triton.jit
def _byte_dot(code_ptr, packed, x_pair, BYTE: tl.constexpr):
    """fp32 code[high] * x[2j] + code[low] * x[2j + 1] of byte BYTE of each packed word, by gathers from the fp32
    code table: the interpreter's stand-in for dot_program."""
    even = tl.load(code_ptr + ((packed >> (8 * BYTE + 4)) & 0xF))
    odd = tl.load(code_ptr + ((packed >> (8 * BYTE)) & 0xF))
    x_even = (x_pair & 0xFFFF).to(tl.int16).to(tl.float16, bitcast=True).to(tl.float32)
    x_odd = (x_pair >> 16).to(tl.int16).to(tl.float16, bitcast=True).to(tl.float32)
    return even * x_even + odd * x_odd


@triton.jit
def _word_dot(code_ptr, packed, x0, x1, x2, x3, w0, w1, w2, w3, LOOKUP: tl.constexpr, DOT_ASM: tl.constexpr):
    """fp32 dot product of the 8 weights of each packed int32 word with x (x0..x3: x's fp16 pairs of the word's
    bytes as int32): nf4_lut.dot_program on the GPU (LOOKUP 4, w0..w3 the table's register words), gathers
    from the code table in the interpreter (LOOKUP 0)."""
    if LOOKUP == 4:
        return tl.inline_asm_elementwise(DOT_ASM, _DOT_CONSTRAINTS, [packed, x0, x1, x2, x3, w0, w1, w2, w3],
                                         dtype=tl.float32, is_pure=True, pack=1)  # fmt: skip
    else:
        return (_byte_dot(code_ptr, packed, x0, 0) + _byte_dot(code_ptr, packed, x1, 1)
                + _byte_dot(code_ptr, packed, x2, 2) + _byte_dot(code_ptr, packed, x3, 3))  # fmt: skip


@triton.jit
def _lut_block(q_ptr, absmax_ptr, rows, g, K, w0, w1, w2, w3, GROUP: tl.constexpr, LUT_ASM: tl.constexpr,
               LUT_CONSTRAINTS: tl.constexpr):  # fmt: skip
    """fp16 NF4 codes of absmax block g of `rows`, [BLOCK_N, GROUP] in k order (not scaled), and the
    block's absmax [BLOCK_N, 1]: the register table of engine/kernels/nf4_lut.py, 4 bytes per call; w0..w3
    are the table's register words, int32 [HALF] rows loaded once per program."""
    HALF: tl.constexpr = GROUP // 2
    packed = tl.load(q_ptr + rows[:, None] * (K // 2) + g * HALF + tl.arange(0, HALF)[None, :])  # [BN, HALF]
    scale = tl.load(absmax_ptr + rows[:, None] * (K // GROUP) + g)  # [BN, 1]
    w0 = tl.broadcast_to(w0[None, :], packed.shape)
    w1 = tl.broadcast_to(w1[None, :], packed.shape)
    w2 = tl.broadcast_to(w2[None, :], packed.shape)
    w3 = tl.broadcast_to(w3[None, :], packed.shape)
    even, odd = tl.inline_asm_elementwise(LUT_ASM, LUT_CONSTRAINTS, [packed, w0, w1, w2, w3],
                                          dtype=(tl.float16, tl.float16), is_pure=True, pack=4)  # fmt: skip
    return tl.reshape(tl.join(even, odd), (packed.shape[0], GROUP)), scale


@triton.jit(do_not_specialize=["M", "split_k", "lora_r", "seg1", "seg2"])
def _nf4_matmul_kernel(
    x_ptr, q_ptr, absmax_ptr, code_ptr, y_ptr, ws_ptr, ticket_ptr,
    t_ptr, slot_ptr, b_ptr, scale_ptr, rank_ptr,
    M, N, K, k_words, stride_xm, stride_ym, k_per_split, split_k, lora_r, seg1, seg2,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP: tl.constexpr,
    IS_SPLIT: tl.constexpr, USE_DOT: tl.constexpr, HAS_LORA: tl.constexpr, BLOCK_R: tl.constexpr,
    NUM_SEG: tl.constexpr, T_SPLITS: tl.constexpr, T_BLOCK: tl.constexpr, R_P2: tl.constexpr, LOOKUP: tl.constexpr,
    SWAP_AB: tl.constexpr, LUT_ASM: tl.constexpr, LUT_CONSTRAINTS: tl.constexpr,
):  # fmt: skip
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    pid_m = tl.program_id(2)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rows = offs_n % N  # clamped for loads; stores are masked
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    m_mask = offs_m < M
    HALF: tl.constexpr = GROUP // 2
    G: tl.constexpr = BLOCK_K // GROUP
    offs_k = tl.arange(0, BLOCK_K)
    g_begin = pid_k * (k_per_split // GROUP)
    g_end = g_begin + k_per_split // GROUP
    if USE_DOT:
        acc = tl.zeros((BLOCK_N, BLOCK_M) if SWAP_AB else (BLOCK_M, BLOCK_N), tl.float32)
        if LOOKUP == 4:  # the table's register words, each as a [HALF] row (a scalar went through shared memory)
            same = tl.zeros([HALF], tl.int32)
            w0, w1 = tl.load(code_ptr + same), tl.load(code_ptr + 1 + same)
            w2, w3 = tl.load(code_ptr + 2 + same), tl.load(code_ptr + 3 + same)
        for g0 in range(g_begin, g_end, G):
            if LOOKUP == 4:  # G absmax blocks per step, one dot each (swapped): its scale multiplies the fp32 product
                for gi in tl.static_range(G):
                    x_ptrs = x_ptr + offs_m[:, None] * stride_xm + (g0 + gi) * GROUP + tl.arange(0, GROUP)[None, :]
                    xt = tl.load(x_ptrs, mask=m_mask[:, None], other=0.0)  # [BM, GROUP]
                    codes, scale = _lut_block(q_ptr, absmax_ptr, rows, g0 + gi, K, w0, w1, w2, w3, GROUP, LUT_ASM,
                                              LUT_CONSTRAINTS)  # fmt: skip
                    acc += tl.dot(codes, tl.trans(xt)) * scale
            else:
                x_ptrs = x_ptr + offs_m[:, None] * stride_xm + g0 * GROUP + offs_k[None, :]
                xt = tl.load(x_ptrs, mask=m_mask[:, None], other=0.0)  # [BM, BLOCK_K]
                even, odd, scale = _group_tile(q_ptr, absmax_ptr, code_ptr, rows, g0, K, G, HALF, LOOKUP)
                w = tl.join((even * scale).to(tl.float16), (odd * scale).to(tl.float16))  # [BN, G, HALF, 2]
                w = tl.reshape(w, (BLOCK_N, BLOCK_K))
                # swapped, the weight tile stays the first operand: [BN, BK] @ [BK, BM]
                acc = tl.dot(w, tl.trans(xt), acc) if SWAP_AB else tl.dot(xt, tl.trans(w), acc)
        out = tl.trans(acc) if SWAP_AB else acc
    else:  # one row (BLOCK_M == 1), FMAs in the layout of the packed int32 words (8 weights each)
        WORDS: tl.constexpr = BLOCK_K // 8  # a row's words per K step, contiguous: each warp load covers whole lines
        acc = tl.zeros((BLOCK_N, WORDS), tl.float32)
        offs_w = tl.arange(0, WORDS)
        same = tl.zeros([WORDS], tl.int32)
        w0, w1 = tl.load(code_ptr + same), tl.load(code_ptr + 1 + same)  # the register table's words (LOOKUP 4)
        w2, w3 = tl.load(code_ptr + 2 + same), tl.load(code_ptr + 3 + same)
        for g0 in range(g_begin, g_end, G):
            words = g0 * (GROUP // 8) + offs_w  # [WORDS]
            packed = tl.load(q_ptr + rows[:, None] * k_words + words[None, :])  # [BN, WORDS] int32
            scale_ptrs = absmax_ptr + rows[:, None] * (K // GROUP) + (words // (GROUP // 8))[None, :]
            scale = _load_like(scale_ptrs, LOOKUP)  # [BN, WORDS], one read per block and thread
            # x as int32 words, each the fp16 pair (k = 2j, 2j + 1) of packed byte j; byte b of each word: [WORDS]
            x_pairs = x_ptr + pid_m * stride_xm + words * 4
            x0, x1, x2, x3 = tl.load(x_pairs), tl.load(x_pairs + 1), tl.load(x_pairs + 2), tl.load(x_pairs + 3)
            part = _word_dot(code_ptr, packed, x0[None, :], x1[None, :], x2[None, :], x3[None, :], w0[None, :],
                             w1[None, :], w2[None, :], w3[None, :], LOOKUP, LUT_ASM)  # fmt: skip
            acc += part * scale
        out = tl.sum(acc, axis=1)[None, :]  # [1, BN]
    # the first split's partial carries the LoRA expand, off the path of the tile's last program; HAS_LORA is
    # resolved at compile time, pid_k at run time
    if HAS_LORA:  # noqa: SIM102
        if pid_k == 0:
            out += lora_delta_tile(t_ptr, slot_ptr, b_ptr, scale_ptr, rank_ptr, offs_m, pid_n * BLOCK_N, M, N, lora_r,
                                   seg1, seg2, BLOCK_M, BLOCK_N, BLOCK_R, NUM_SEG, T_SPLITS, T_BLOCK, R_P2)  # fmt: skip
    if IS_SPLIT:
        tile = pid_m * tl.num_programs(0) + pid_n
        tile_offs = tl.arange(0, BLOCK_M)[:, None] * BLOCK_N + tl.arange(0, BLOCK_N)[None, :]
        ws_mask = m_mask[:, None]  # the batch's own rows only: at M = 1 a tile is 1 of BLOCK_M rows
        tl.store(ws_ptr + (tile * split_k + pid_k) * (BLOCK_M * BLOCK_N) + tile_offs, out, mask=ws_mask)
        tl.debug_barrier()
        ticket = tl.atomic_add(ticket_ptr + tile, 1, sem="acq_rel", scope="gpu")
        if ticket == split_k - 1:
            total = tl.zeros((BLOCK_M, BLOCK_N), tl.float32)
            for s in range(split_k):
                part = ws_ptr + (tile * split_k + s) * (BLOCK_M * BLOCK_N) + tile_offs
                total += tl.load(part, mask=ws_mask, other=0.0, cache_modifier=".cg")
            _store_tile(total, y_ptr, offs_m, pid_n * BLOCK_N, M, N, stride_ym, BLOCK_N)
            tl.atomic_xchg(ticket_ptr + tile, 0)
    else:
        _store_tile(out, y_ptr, offs_m, pid_n * BLOCK_N, M, N, stride_ym, BLOCK_N)


@triton.jit
def _store_tile(out, y_ptr, offs_m, n_start, M, N, stride_ym, BLOCK_N: tl.constexpr):
    offs_n = n_start + tl.arange(0, BLOCK_N)
    mask = (offs_m < M)[:, None] & (offs_n < N)[None, :]
    tl.store(y_ptr + offs_m[:, None] * stride_ym + offs_n[None, :], out.to(tl.float16), mask=mask)


@triton.jit
def _nf4_dequantize_kernel(q_ptr, absmax_ptr, code_ptr, out_ptr, num_bytes, BLOCK: tl.constexpr,
                           GROUP: tl.constexpr):  # fmt: skip
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)  # byte index
    mask = offs < num_bytes
    packed = tl.load(q_ptr + offs, mask=mask, other=0)
    hi = tl.load(code_ptr + (packed >> 4).to(tl.int32))
    lo = tl.load(code_ptr + (packed & 0xF).to(tl.int32))
    scale = tl.load(absmax_ptr + offs // (GROUP // 2), mask=mask, other=0.0)
    w = tl.interleave(hi * scale, lo * scale)  # [2 * BLOCK]
    offs_out = tl.program_id(0) * (2 * BLOCK) + tl.arange(0, 2 * BLOCK)
    tl.store(out_ptr + offs_out, w.to(tl.float16), mask=offs_out < 2 * num_bytes)


def _per_code(kind: str, code: torch.Tensor, build: Callable[[], T]) -> T:
    """One value of each kind per `code` tensor (weights' tables live as long as the weights), built before
    CUDA graph capture, as any warm-up call does."""
    key = (kind, code.device, code.data_ptr())
    if key not in _code_derived:
        assert not (code.is_cuda and torch.cuda.is_current_stream_capturing()), "call nf4_matmul before capture"
        _code_derived[key] = build()
    return _code_derived[key]


def byte_pair_table(code: torch.Tensor) -> torch.Tensor:
    """fp32 [256, 2]: for byte b, (code[b >> 4], code[b & 15]), the values of even and odd k."""

    def build() -> torch.Tensor:
        byte = torch.arange(256, device=code.device)
        return torch.stack((code[byte >> 4], code[byte & 0xF]), dim=-1).contiguous()  # [256, 2]

    return _per_code("pairs", code, build)


def code_values(code: torch.Tensor) -> tuple[float, ...]:
    """The code table's values on the host (one device read per `code` tensor)."""
    return _per_code("values", code, lambda: tuple(code.float().tolist()))


def lut_words(code: torch.Tensor) -> torch.Tensor:
    """int32 [4]: the register table's words that the kernel loads once per program (nf4_lut.register_words)."""

    def build() -> torch.Tensor:
        words = [w - (1 << 32) if w >> 31 else w for w in register_words(code_values(code))]  # as signed int32
        return torch.tensor(words, dtype=torch.int32, device=code.device)

    return _per_code("words", code, build)


def _tickets_for(device: torch.device) -> torch.Tensor:
    tickets = _tickets.get(device)
    if tickets is None:
        tickets = torch.zeros(TICKETS, dtype=torch.int32, device=device)
        _tickets[device] = tickets
    return tickets


def gluon_ready(device: torch.device) -> bool:
    """Whether the Gluon MMA tile runs here: a CUDA device with mma.sync (sm_80+) and a Triton with Gluon."""
    if device not in _gluon_ready:
        ok = not INTERPRETED and device.type == "cuda" and torch.cuda.get_device_capability(device) >= (8, 0)
        if ok:
            try:
                import engine.kernels.nf4_mma_gluon  # noqa: F401
            except ImportError as exc:
                logger.info("Gluon NF4 tile unavailable (%s); the Triton tiles run instead", exc)
                ok = False
        _gluon_ready[device] = ok
    return _gluon_ready[device]


def gemv_resident(device: torch.device) -> int:
    """How many programs of the Gluon one-row tile fit on one SM by shared memory (0 where Gluon does not run)."""
    if device not in _gemv_programs:
        resident = 0
        if gluon_ready(device):
            from engine.kernels.nf4_gemv_gluon import smem_programs

            resident = smem_programs(device)
        _gemv_programs[device] = resident
    return _gemv_programs[device]


def gemv_ready(device: torch.device) -> bool:
    """Whether the Gluon one-row tile runs here by default: at least two of its programs (each with a 64 KB table in
    shared memory) fit on an SM, as on datacenter GPUs (consumer RTX cards have 100 KB per SM)."""
    return gemv_resident(device) >= 2


def num_sms(device: torch.device) -> int:
    if device not in _num_sms:
        _num_sms[device] = torch.cuda.get_device_properties(device).multi_processor_count
    return _num_sms[device]


def nf4_matmul_triton(
    x: torch.Tensor,
    qweight: torch.Tensor,
    absmax: torch.Tensor,
    code: torch.Tensor,
    n: int,
    k: int,
    blocksize: int = 64,
    config: Nf4Config | None = None,
    lora: LoraExpand | None = None,
) -> torch.Tensor:
    """y [M, N] fp16 = x [M, K] fp16 @ W^T, plus the fused LoRA expand when `lora` is given."""
    m = x.shape[0]
    assert x.stride(1) == 1 and k % blocksize == 0 and blocksize % 2 == 0
    cfg = config or pick_config(m, n, k, blocksize, num_sms(x.device), mma=gluon_ready(x.device),
                                gemv=gemv_ready(x.device))  # fmt: skip
    if cfg.gluon and not cfg.use_dot:
        from engine.kernels.nf4_gemv_gluon import byte_table, nf4_matmul_gemv, register_programs

        per_sm = min(cfg.programs_per_sm, gemv_resident(x.device), register_programs(cfg.num_warps))
        programs = max(1, per_sm) * num_sms(x.device)
        table = _per_code("bytes", code, lambda: byte_table(code))
        return nf4_matmul_gemv(x, qweight, absmax, table, n, k, cfg, programs, lora)
    if cfg.gluon:
        from engine.kernels.nf4_mma_gluon import nf4_matmul_mma

        if m == 0:
            return torch.empty((0, n), dtype=torch.float16, device=x.device)
        return nf4_matmul_mma(x, qweight, absmax, lut_words(code), pairs_asm(code_values(code)), n, k,
                              _tickets_for(x.device), cfg, lora)  # fmt: skip
    assert k % (cfg.split_k * cfg.block_k) == 0 and cfg.block_k % blocksize == 0, (cfg, k, blocksize)
    y = torch.empty((m, n), dtype=torch.float16, device=x.device)
    if m == 0:
        return y
    grid = (triton.cdiv(n, cfg.block_n), cfg.split_k, triton.cdiv(m, cfg.block_m))
    is_split = cfg.split_k > 1
    if is_split:
        assert grid[0] * grid[2] <= TICKETS, "too many split-K tiles for the ticket buffer"
        ws = torch.empty((grid[0] * grid[2] * cfg.split_k * cfg.block_m * cfg.block_n,), dtype=torch.float32,
                         device=x.device)  # fmt: skip
        tickets = _tickets_for(x.device)
    else:
        ws = tickets = y
    lora_args, lora_consts = expand_args(lora, y, cfg.block_n)
    lookup = 0 if INTERPRETED else cfg.lookup
    table = byte_pair_table(code) if lookup == 3 else lut_words(code) if lookup == 4 else code
    asm = "" if lookup != 4 else lut_asm(code_values(code)) if cfg.use_dot else dot_asm(code_values(code))
    stride_xm = x.stride(0)
    if not cfg.use_dot:  # the one-row path reads the weight as int32 words and x as int32 fp16 pairs
        if x.stride(0) % 2 or x.storage_offset() % 2:
            x = x.clone(memory_format=torch.contiguous_format)
        qweight, x, stride_xm = qweight.reshape(-1).view(torch.int32), x.view(torch.int32), x.stride(0) // 2
    _nf4_matmul_kernel[grid](
        x, qweight, absmax, table, y, ws, tickets, *lora_args[:5],
        m, n, k, k // 8, stride_xm, y.stride(0), k // cfg.split_k, cfg.split_k, *lora_args[5:],
        BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k, GROUP=blocksize,
        IS_SPLIT=is_split, USE_DOT=cfg.use_dot, **lora_consts, LOOKUP=lookup, SWAP_AB=cfg.swap_ab,
        LUT_ASM=asm, LUT_CONSTRAINTS=CONSTRAINTS,
        num_warps=cfg.num_warps, num_stages=cfg.num_stages,
    )  # fmt: skip
    return y


def nf4_dequantize_triton(
    qweight: torch.Tensor, absmax: torch.Tensor, code: torch.Tensor, n: int, k: int, blocksize: int = 64
) -> torch.Tensor:
    """fp16 [n, k] weight (for prefill: dequantize once, then one GEMM)."""
    assert (n * k) % blocksize == 0 and blocksize % 2 == 0
    out = torch.empty((n, k), dtype=torch.float16, device=qweight.device)
    num_bytes = n * k // 2
    block = 1024
    _nf4_dequantize_kernel[(triton.cdiv(num_bytes, block),)](
        qweight, absmax, code, out, num_bytes, BLOCK=block, GROUP=blocksize, num_warps=4
    )
    return out
