"""Triton NF4 matmul for small M (decode), reading bitsandbytes' packed layout directly.

Each program owns a [BLOCK_M, BLOCK_N] output tile and a slice of K (split-K). Per K step it loads the
packed bytes of a [BLOCK_N, BLOCK_K] weight tile once, looks the nibbles up in the 16-entry NF4 table
(L1-resident), scales by the per-64 absmax in fp32 and multiplies on tensor cores (fp16 operands, fp32
accumulation) or with FMAs. Split-K partials go to a workspace; the last program to finish a tile (an
atomic ticket per tile, reset by that program) sums them in a fixed order, so results are deterministic.
No host syncs and fixed-size allocations only: CUDA-graph capturable once the ticket buffer exists
(call once before capture, as any warm-up does).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from engine.kernels.lora_triton import block_r, lora_delta_tile, segment_args
from engine.kernels.lora_types import LoraExpand
from engine.kernels.nf4_configs import Nf4Config, pick_config

TICKETS = 1 << 16
_tickets: dict[torch.device, torch.Tensor] = {}
_num_sms: dict[torch.device, int] = {}


@triton.jit
def _dequant_tile(q_ptr, absmax_ptr, code_ptr, rows, k0, K, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                  GROUP: tl.constexpr):  # fmt: skip
    """fp32 [BLOCK_N, BLOCK_K] weight tile at (rows, k0): code[nibble] * absmax[row, k // GROUP]."""
    offs_b = k0 // 2 + tl.arange(0, BLOCK_K // 2)
    packed = tl.load(q_ptr + rows[:, None] * (K // 2) + offs_b[None, :])  # [BN, BK/2] uint8
    hi = tl.load(code_ptr + (packed >> 4).to(tl.int32))  # even k
    lo = tl.load(code_ptr + (packed & 0xF).to(tl.int32))  # odd k
    w = tl.interleave(hi, lo)  # [BN, BK]
    offs_g = k0 // GROUP + tl.arange(0, BLOCK_K // GROUP)
    scale = tl.load(absmax_ptr + rows[:, None] * (K // GROUP) + offs_g[None, :])  # [BN, BK/GROUP]
    w = tl.reshape(w, (BLOCK_N, BLOCK_K // GROUP, GROUP)) * scale[:, :, None]
    return tl.reshape(w, (BLOCK_N, BLOCK_K))


@triton.jit(do_not_specialize=["M", "split_k", "lora_r", "lora_splits", "seg1", "seg2"])
def _nf4_matmul_kernel(
    x_ptr, q_ptr, absmax_ptr, code_ptr, y_ptr, ws_ptr, ticket_ptr,
    t_ptr, slot_ptr, b_ptr, scale_ptr, rank_ptr,
    M, N, K, stride_xm, stride_ym, k_per_split, split_k, lora_r, lora_splits, seg1, seg2,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP: tl.constexpr,
    IS_SPLIT: tl.constexpr, USE_DOT: tl.constexpr, HAS_LORA: tl.constexpr, BLOCK_R: tl.constexpr,
    NUM_SEG: tl.constexpr,
):  # fmt: skip
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    pid_m = tl.program_id(2)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rows = offs_n % N  # clamped for loads; stores are masked
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    m_mask = offs_m < M
    offs_k = tl.arange(0, BLOCK_K)
    k_begin = pid_k * k_per_split
    acc = tl.zeros((BLOCK_M, BLOCK_N), tl.float32) if USE_DOT else tl.zeros((BLOCK_M, BLOCK_N, BLOCK_K), tl.float32)
    for k0 in range(k_begin, k_begin + k_per_split, BLOCK_K):
        w = _dequant_tile(q_ptr, absmax_ptr, code_ptr, rows, k0, K, BLOCK_N, BLOCK_K, GROUP)  # [BN, BK]
        x_ptrs = x_ptr + offs_m[:, None] * stride_xm + (k0 + offs_k)[None, :]
        xt = tl.load(x_ptrs, mask=m_mask[:, None], other=0.0)  # [BM, BK]
        if USE_DOT:
            acc = tl.dot(xt, tl.trans(w.to(tl.float16)), acc)  # [BM, BN]
        else:
            acc += xt.to(tl.float32)[:, None, :] * w[None, :, :]  # [BM, BN, BK]
    out = acc if USE_DOT else tl.sum(acc, axis=2)  # [BM, BN]
    if IS_SPLIT:
        tile = pid_m * tl.num_programs(0) + pid_n
        tile_offs = tl.arange(0, BLOCK_M)[:, None] * BLOCK_N + tl.arange(0, BLOCK_N)[None, :]
        tl.store(ws_ptr + (tile * split_k + pid_k) * (BLOCK_M * BLOCK_N) + tile_offs, out)
        tl.debug_barrier()
        ticket = tl.atomic_add(ticket_ptr + tile, 1, sem="acq_rel", scope="gpu")
        if ticket == split_k - 1:
            total = tl.zeros((BLOCK_M, BLOCK_N), tl.float32)
            for s in range(split_k):
                part = ws_ptr + (tile * split_k + s) * (BLOCK_M * BLOCK_N) + tile_offs
                total += tl.load(part, cache_modifier=".cg")
            _store_tile(total, y_ptr, t_ptr, slot_ptr, b_ptr, scale_ptr, rank_ptr, offs_m, pid_n * BLOCK_N, M, N,
                        stride_ym, lora_r, lora_splits, seg1, seg2, BLOCK_M, BLOCK_N, HAS_LORA, BLOCK_R,
                        NUM_SEG)  # fmt: skip
            tl.atomic_xchg(ticket_ptr + tile, 0)
    else:
        _store_tile(out, y_ptr, t_ptr, slot_ptr, b_ptr, scale_ptr, rank_ptr, offs_m, pid_n * BLOCK_N, M, N,
                    stride_ym, lora_r, lora_splits, seg1, seg2, BLOCK_M, BLOCK_N, HAS_LORA, BLOCK_R,
                    NUM_SEG)  # fmt: skip


@triton.jit
def _store_tile(out, y_ptr, t_ptr, slot_ptr, b_ptr, scale_ptr, rank_ptr, offs_m, n_start, M, N, stride_ym,
                lora_r, lora_splits, seg1, seg2, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                HAS_LORA: tl.constexpr, BLOCK_R: tl.constexpr, NUM_SEG: tl.constexpr):  # fmt: skip
    if HAS_LORA:
        out += lora_delta_tile(t_ptr, slot_ptr, b_ptr, scale_ptr, rank_ptr, offs_m, n_start, M, N, lora_r,
                               lora_splits, seg1, seg2, BLOCK_M, BLOCK_N, BLOCK_R, NUM_SEG)  # fmt: skip
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


def _tickets_for(device: torch.device) -> torch.Tensor:
    tickets = _tickets.get(device)
    if tickets is None:
        tickets = torch.zeros(TICKETS, dtype=torch.int32, device=device)
        _tickets[device] = tickets
    return tickets


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
    cfg = config or pick_config(m, n, k, blocksize, num_sms(x.device))
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
    if lora is None:
        t = slot_ids = b_stack = scales = ranks = y
        lora_splits, lora_r, segments = 1, 1, ()
    else:
        t, slot_ids, b_stack, scales, ranks, segments = lora
        lora_splits, lora_r = t.shape[1], b_stack.shape[2]
    seg1, seg2 = segment_args(segments, cfg.block_n)
    _nf4_matmul_kernel[grid](
        x, qweight, absmax, code, y, ws, tickets, t, slot_ids, b_stack, scales, ranks,
        m, n, k, x.stride(0), y.stride(0), k // cfg.split_k, cfg.split_k, lora_r, lora_splits, seg1, seg2,
        BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k, GROUP=blocksize,
        IS_SPLIT=is_split, USE_DOT=cfg.use_dot, HAS_LORA=lora is not None,
        BLOCK_R=block_r(lora_r), NUM_SEG=len(segments) + 1,
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
