"""GPU check and benchmark of engine.kernels (NF4 small-M matmul, multi-LoRA) on Llama-3-8B shapes.

python -m bench.bench_kernels --check --sweep --bench --out results.json
  --check  every Triton path against bitsandbytes' dequantize + fp32 matmul (fresh random inputs, poisoned
           outputs, split-K tickets reset, bitwise repeatability, CUDA-graph replay); exit 1 on a failure
  --sweep  times a grid of launch configs per shape and M (compiled in parallel first); prints the TUNED
           table for engine/kernels/nf4_configs.py and uses it for --bench in the same run
  --bench  device copy bandwidth; per-linear and whole decode-step times (224 linears as 128 fused ones
           + the fp16 lm_head), ours vs bitsandbytes' matmul_4bit; fraction of the memory floor; LoRA
           overhead (rank 8 q/k/v, rank 16 all seven projections; each row its own adapter slot)
Every time is the median replay of a CUDA graph; weights rotate over copies larger than L2.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import importlib.util
import json
import multiprocessing
import statistics
import sys
import time
import traceback
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F

from engine.kernels import (
    LoraExpand,
    lora_reference,
    lora_shrink,
    lora_shrink_expand,
    nf4_configs,
    nf4_dequantize,
    nf4_matmul,
)
from engine.kernels.nf4_configs import Nf4Config
from engine.kernels.nf4_reference import nf4_dequantize_reference

SHAPES = {"qkv": (6144, 4096), "o": (4096, 4096), "gate_up": (28672, 4096), "down": (4096, 14336)}
SEGMENTS = {"qkv": (4096, 5120), "o": (), "gate_up": (14336,), "down": ()}
LAYERS = 32
LM_HEAD = (128256, 4096)
BATCHES = (1, 2, 4, 8, 16)
SWEEP_M = (1, 4, 8, 16)
LORA_BATCHES = (1, 4, 8)
LORA_SETUPS = {"rank8-qkv": (8, ("qkv",)), "rank16-all7": (16, ("qkv", "o", "gate_up", "down"))}
NUM_SLOTS = 8
ROTATE_BYTES = 160 * 2**20  # > 3x the H100's 50 MB L2
DOT_TILES = list(
    dict.fromkeys(
        [(bn, bk, 4, 1, False) for bn in (16, 32, 64) for bk in (128, 256)]
        + [(bn, bk, w, s, True) for bn in (64, 128) for bk in (64, 128, 256) for w in (4, 8) for s in (1, 2)]
        + [(bn, 64, w, 3, True) for bn in (64, 128) for w in (4, 8)]
        + [
            (bn, bk, w, s, True)
            for bn in (16, 32, 64)
            for bk in (64, 128, 256)
            for w in (1, 2, 4)
            for s in (2, 3, 4)
            if w * 16 <= bn
        ]
    )
)  # (block_n, block_k, warps, stages, swap_ab): swapped tiles put the weight first, as tensor cores' M side
FMA_TILES = [
    (bn, bk, w, 1)
    for bn in (4, 8, 16, 32, 64)
    for bk in (512, 1024, 2048, 4096)
    for w in (1, 2, 4, 8)
    if 8 <= bn * bk // 8 // (32 * w) <= 32
]  # M = 1 only: (block_n, block_k, warps, stages), 8 to 32 packed words per thread
MMA_TILES = [(w, t, p) for w in (2, 4, 8) for t in (1, 2, 4) for p in (False, True)]  # M = 2..8, Gluon: warps,
# row tiles per warp, next step's operands loaded ahead
LOOKUPS = (3, 4)  # byte-pair table, register table (swapped); --check covers lookups 0 and 1 too
SPLITS = (1, 2, 4, 8)
DEVICE = torch.device("cuda")
HAS_BNB = importlib.util.find_spec("bitsandbytes") is not None
NF4_CODE = [-1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
            -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
            0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
            0.7229568362236023, 1.0]  # fmt: skip


@dataclass
class Nf4Weight:
    qweight: torch.Tensor  # [N*K/2, 1] uint8
    absmax: torch.Tensor  # [N*K/64] fp32
    code: torch.Tensor  # [16] fp32
    n: int
    k: int

    @property
    def nbytes(self) -> int:
        return self.qweight.numel() + self.absmax.numel() * 4

    def quant_state(self):  # bitsandbytes' view of the same bytes, for its matmul_4bit
        from bitsandbytes.functional import QuantState

        return QuantState(absmax=self.absmax, shape=torch.Size((self.n, self.k)), code=self.code, blocksize=64,
                          quant_type="nf4", dtype=torch.float16)  # fmt: skip


def nf4_code() -> torch.Tensor:
    """bitsandbytes' NF4 table (get_4bit_type("nf4")), fp32."""
    return torch.tensor(NF4_CODE, dtype=torch.float32, device=DEVICE)


def random_weight(n: int, k: int, code: torch.Tensor) -> Nf4Weight:
    """Random packed bytes and scales: the kernel's cost does not depend on the values."""
    qweight = torch.randint(0, 256, (n * k // 2, 1), dtype=torch.uint8, device=DEVICE)
    absmax = torch.rand(n * k // 64, device=DEVICE) * 0.05 + 0.01
    return Nf4Weight(qweight, absmax, code, n, k)


def quantized_weight(n: int, k: int) -> tuple[Nf4Weight, torch.Tensor]:
    """An NF4 weight and its dequantized fp16 [N, K] reference: bitsandbytes' quantize/dequantize when
    installed, else random bytes and the torch reference (bit-identical to bitsandbytes, tests/)."""
    if not HAS_BNB:
        w = random_weight(n, k, nf4_code())
        return w, nf4_dequantize_reference(w.qweight, w.absmax, w.code, n, k)
    from bitsandbytes.functional import dequantize_4bit, quantize_4bit

    weight = torch.randn(n, k, device=DEVICE, dtype=torch.float16) * 0.02
    qweight, state = quantize_4bit(weight, quant_type="nf4", blocksize=64, compress_statistics=False)
    return Nf4Weight(qweight, state.absmax, state.code, n, k), dequantize_4bit(qweight, state)


def ours(x: torch.Tensor, w: Nf4Weight, config: Nf4Config | None = None, lora: LoraExpand | None = None):
    if config is None:
        return nf4_matmul(x, w.qweight, w.absmax, w.code, w.n, w.k, lora=lora)
    from engine.kernels.nf4_triton import nf4_matmul_triton

    return nf4_matmul_triton(x, w.qweight, w.absmax, w.code, w.n, w.k, config=config, lora=lora)


def time_graph(fn, reps: int = 15) -> float:
    """Median milliseconds of one replay of a CUDA graph that runs fn once."""
    fn()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    graph.replay()
    torch.cuda.synchronize()
    times = []
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    for _ in range(reps):
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    del graph
    return statistics.median(times)


def guarded(fn, reps: int = 15) -> float:
    """time_graph, or NaN (with the error printed) when fn cannot run or be captured."""
    try:
        return time_graph(fn, reps)
    except Exception as exc:
        print(f"timing failed: {type(exc).__name__}: {str(exc)[:300]}", flush=True)
        torch.cuda.synchronize()
        return float("nan")


def copy_bandwidth() -> float:
    """Bytes read + written per second by a 1 GiB device-to-device copy."""
    src = torch.randint(0, 256, (2**30,), dtype=torch.uint8, device=DEVICE)
    dst = torch.empty_like(src)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    dst.copy_(src)
    times = []
    for _ in range(20):
        start.record()
        dst.copy_(src)
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return 2 * src.numel() / statistics.median(times)


def rel_err(got: torch.Tensor, expected: torch.Tensor) -> float:
    got, expected = got.double(), expected.double()
    if not torch.isfinite(got).all():
        return float("nan")
    return ((got - expected).norm() / expected.norm()).item()


def poison(numel: int) -> None:
    """Leave a NaN-filled fp16 block in the caching allocator, so that an output of this size lands on it."""
    torch.full((numel,), float("nan"), dtype=torch.float16, device=DEVICE)


# ---------------------------------------------------------------- check


def random_adapters(n: int, k: int, r: int, segments: tuple[int, ...], mixed_ranks: bool):
    groups = len(segments) + 1
    a_stack = torch.randn(NUM_SLOTS, groups * r, k, device=DEVICE, dtype=torch.float16) * 0.05
    b_stack = torch.randn(NUM_SLOTS, r, n, device=DEVICE, dtype=torch.float16) * 0.05
    scales = torch.rand(NUM_SLOTS, device=DEVICE) + 0.5
    if mixed_ranks:
        ranks = torch.randint(1, r + 1, (NUM_SLOTS,), dtype=torch.int32, device=DEVICE)
    else:
        ranks = torch.full((NUM_SLOTS,), r, dtype=torch.int32, device=DEVICE)
    return a_stack, b_stack, scales, ranks


def run_checks() -> list[dict]:
    from engine.kernels.nf4_triton import _tickets

    rows: list[dict] = []

    def record(what: str, shape: str, m: int, err: float, limit: float, extra: str = "") -> None:
        ok = err == err and err < limit
        rows.append(dict(what=what, shape=shape, m=m, rel_err=err, limit=limit, ok=ok, note=extra))
        print(f"check {what:28s} {shape:8s} M={m:<3d} rel_err={err:.2e} {'ok' if ok else 'FAIL'} {extra}", flush=True)

    extra_configs = [Nf4Config(block_m=1, block_n=16, block_k=256, split_k=4, use_dot=False, lookup=lookup)
                     for lookup in (0, 4)]  # fmt: skip
    extra_configs += [Nf4Config(block_n=64, block_k=128, split_k=8, lookup=3), Nf4Config(block_n=128, lookup=0)]
    extra_configs += [Nf4Config(block_n=bn, block_k=64, split_k=4, lookup=4, swap_ab=True) for bn in (16, 64)]
    extra_configs += [Nf4Config(8, 128, 128, 4, num_warps=4, num_stages=2, lookup=4, swap_ab=True, gluon=True)]
    for name, (n, k) in SHAPES.items():
        w, dense = quantized_weight(n, k)
        exact = torch.equal(nf4_dequantize(w.qweight, w.absmax, w.code, n, k), dense)
        record("dequantize == bnb", name, 0, 0.0 if exact else float("nan"), 1.0)
        for m in (*BATCHES, 3, 40):
            x = torch.randn(m, k, device=DEVICE, dtype=torch.float16)
            expected = x.float() @ dense.float().t()
            poison(m * n)
            y = ours(x, w)
            record("nf4_matmul (picked config)", name, m, rel_err(y, expected), 2e-3)
            if not torch.equal(y, ours(x, w)):
                record("nf4_matmul repeatable", name, m, float("nan"), 1.0)
        for cfg in extra_configs:
            for m in (1, 8):
                x = torch.randn(m, k, device=DEVICE, dtype=torch.float16)
                poison(m * n)
                record("nf4_matmul config", name, m, rel_err(ours(x, w, cfg), x.float() @ dense.float().t()), 2e-3,
                       f"bn={cfg.block_n} bk={cfg.block_k} split={cfg.split_k} dot={cfg.use_dot} "
                       f"lookup={cfg.lookup}")  # fmt: skip
        for m in (1, 8) if HAS_BNB else ():
            from bitsandbytes import matmul_4bit

            x = torch.randn(m, k, device=DEVICE, dtype=torch.float16)
            got = matmul_4bit(x, w.qweight.t(), w.quant_state())
            record("bnb matmul_4bit (baseline)", name, m, rel_err(got, x.float() @ dense.float().t()), 2e-3)
        torch.cuda.synchronize()
        record("split-K tickets reset", name, 0, float(sum(t.abs().sum().item() for t in _tickets.values())), 0.5)
        for r, mixed in ((16, True), (64, False)):
            a_stack, b_stack, scales, ranks = random_adapters(n, k, r, SEGMENTS[name], mixed)
            for m in (1, 4, 8, 40):
                x = torch.randn(m, k, device=DEVICE, dtype=torch.float16)
                slot_ids = torch.randint(-1, NUM_SLOTS, (m,), dtype=torch.int32, device=DEVICE)
                slot_ids[0] = 0
                y0 = torch.randn(m, n, device=DEVICE, dtype=torch.float16) * 0.1
                lora_args = (x, slot_ids, a_stack, b_stack, scales, ranks)
                expected = lora_reference(*lora_args, y0.float(), SEGMENTS[name])
                got = lora_shrink_expand(*lora_args, y0.clone(), SEGMENTS[name])
                record(f"lora shrink+expand r={r}", name, m, rel_err(got - y0, expected - y0.float()), 5e-3)
                t = lora_shrink(x, slot_ids, a_stack, ranks, len(SEGMENTS[name]) + 1)
                poison(m * n)
                fused = ours(x, w, lora=LoraExpand(t, slot_ids, b_stack, scales, ranks, SEGMENTS[name]))
                base = (x.float() @ dense.float().t()).half().float()
                want = lora_reference(*lora_args, base, SEGMENTS[name])
                record(f"nf4_matmul + fused lora r={r}", name, m, rel_err(fused, want), 2e-3)
    rows.extend(check_graph_replay())
    return rows


def check_graph_replay() -> list[dict]:
    """Capture a split-K matmul with the fused LoRA expand, then replay it on new inputs."""
    n, k = SHAPES["qkv"]
    w, dense = quantized_weight(n, k)
    a_stack, b_stack, scales, ranks = random_adapters(n, k, 16, SEGMENTS["qkv"], True)
    x = torch.randn(8, k, device=DEVICE, dtype=torch.float16)
    slot_ids = torch.arange(8, dtype=torch.int32, device=DEVICE) - 1
    cfg = Nf4Config(block_n=64, block_k=256, split_k=4)

    def step() -> torch.Tensor:
        t = lora_shrink(x, slot_ids, a_stack, ranks, 3)
        return ours(x, w, cfg, LoraExpand(t, slot_ids, b_stack, scales, ranks, SEGMENTS["qkv"]))

    step()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = step()
    x.copy_(torch.randn_like(x))
    graph.replay()
    want = lora_reference(x, slot_ids, a_stack, b_stack, scales, ranks, (x.float() @ dense.float().t()).half().float(),
                          SEGMENTS["qkv"])  # fmt: skip
    err = rel_err(out, want)
    ok = err < 2e-3
    print(f"check cuda graph replay (split-K + lora) rel_err={err:.2e} {'ok' if ok else 'FAIL'}", flush=True)
    return [dict(what="cuda graph replay", shape="qkv", m=8, rel_err=err, limit=2e-3, ok=ok, note="")]


# ---------------------------------------------------------------- sweep


def sweep_configs(m: int, n: int, k: int, lookups: tuple[int, ...]) -> list[Nf4Config]:
    configs = []
    block_m = max(16, 1 << (m - 1).bit_length())  # M > 16 (short prefills): one tile column block holds all rows
    tiles = [(block_m, bn, bk, w, s, True, swap) for bn, bk, w, s, swap in DOT_TILES]
    if m == 1:
        tiles += [(1, *t, False, False) for t in FMA_TILES]
    if 2 <= m <= 8 and 4 in lookups:
        for warps, row_tiles, prefetch in MMA_TILES:
            block_n = 16 * warps * row_tiles
            for split in (*SPLITS, 16):
                if k % (split * 128) == 0 and n % block_n == 0 and 100 <= n // block_n * split <= 1200:
                    configs.append(Nf4Config(8, block_n, 128, split, True, warps, 2 if prefetch else 1, 4, True,
                                             gluon=True))  # fmt: skip
    for block_m, block_n, block_k, warps, stages, use_dot, swap in tiles:
        for lookup in lookups:
            if not use_dot and lookup != 4:
                continue  # the one-row path reads the register table
            if lookup == 4 and use_dot and not (swap and (block_k == 64 or block_n <= 64)):
                continue  # the register table runs swapped; several absmax blocks a step up to 64 rows
            if lookup != 4 and swap and (block_n < 64 or stages >= 3):
                continue  # the small and 3+-stage swapped tiles were added for the register table
            for split in SPLITS:
                if k % (split * block_k) == 0 and n % block_n == 0 and (n // block_n) * split <= 8192:
                    configs.append(Nf4Config(block_m, block_n, block_k, split, use_dot, warps, stages, lookup, swap))
    return configs


def sweep_points(sweep_m: tuple[int, ...], lookups: tuple[int, ...]) -> list[tuple[str, int, Nf4Config]]:
    return [
        (name, m, cfg) for name, (n, k) in SHAPES.items() for m in sweep_m for cfg in sweep_configs(m, n, k, lookups)
    ]


def compile_key(point: tuple[str, int, Nf4Config]) -> Nf4Config:
    return replace(point[2], split_k=min(point[2].split_k, 2))


def _compile_worker(points: list[tuple[str, int, Nf4Config]]) -> list[str]:
    """Run each config once on the real shape so Triton's on-disk cache holds every compiled variant."""
    failures = []
    code = nf4_code()
    weights = {name: random_weight(n, k, code) for name, (n, k) in SHAPES.items()}
    for name, m, cfg in points:
        x = torch.randn(m, weights[name].k, device=DEVICE, dtype=torch.float16)
        try:
            ours(x, weights[name], cfg)
            torch.cuda.synchronize()
        except Exception as exc:  # a config that does not compile (e.g. too much shared memory) is skipped
            failures.append(f"{name} M={m} {cfg}: {type(exc).__name__}: {str(exc)[:200]}")
    return failures


def precompile(points: list[tuple[str, int, Nf4Config]], workers: int) -> list[str]:
    by_key: dict[Nf4Config, list] = {}
    for p in points:
        by_key.setdefault(compile_key(p), []).append(p)
    firsts = [group[0] for group in by_key.values()]
    chunks = [firsts[i::workers] for i in range(workers)]
    ctx = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(workers, mp_context=ctx) as pool:
        failures = [f for chunk in pool.map(_compile_worker, chunks) for f in chunk]
    print(f"precompiled {len(firsts)} kernel variants in {workers} processes; {len(failures)} failed", flush=True)
    return failures


def rotating_copies(n: int, k: int, code: torch.Tensor) -> list[Nf4Weight]:
    per_copy = n * k // 2 + n * k // 16
    return [random_weight(n, k, code) for _ in range(max(2, -(-ROTATE_BYTES // per_copy)))]


def per_call_ms(fn_for_weight, copies: list[Nf4Weight]) -> float:
    """Milliseconds per call, each call on the next weight copy (never L2-resident), inside one graph."""
    return time_graph(lambda: [fn_for_weight(w) for w in copies]) / len(copies)


def bnb_per_call_ms(x: torch.Tensor, copies: list[Nf4Weight]) -> float:
    """bitsandbytes' matmul_4bit on the same rotating copies (nan without bitsandbytes)."""
    if not HAS_BNB:
        return float("nan")
    pairs = [(w, w.quant_state()) for w in copies]
    return guarded(lambda: [matmul_4bit(x, w.qweight.t(), s) for w, s in pairs]) / len(pairs)


def run_sweep(bandwidth: float, sweep_m: tuple[int, ...], lookups: tuple[int, ...]) -> tuple[dict, list[dict]]:
    code = nf4_code()
    rows, best = [], {}
    for name, (n, k) in SHAPES.items():
        copies = rotating_copies(n, k, code)
        dense = nf4_dequantize_reference(copies[0].qweight, copies[0].absmax, code, n, k).float()  # [N, K]
        for m in sweep_m:
            x = torch.randn(m, k, device=DEVICE, dtype=torch.float16)
            expected = x.float() @ dense.t()
            for cfg in sweep_configs(m, n, k, lookups):
                try:
                    err = rel_err(ours(x, copies[0], cfg), expected)
                    ms = per_call_ms(lambda w, cfg=cfg, x=x: ours(x, w, cfg), copies)
                except Exception as exc:
                    print(f"sweep {name} M={m} {cfg} failed: {type(exc).__name__}", flush=True)
                    continue
                frac = copies[0].nbytes / bandwidth / (ms / 1e3)
                rows.append(dict(shape=name, m=m, ms=ms, floor_fraction=frac, rel_err=err, **asdict(cfg)))
                if not err < 2e-3:  # a wrong config (NaN included) is never picked
                    print(f"sweep {name} M={m} {cfg} WRONG rel_err={err:.2e}", flush=True)
                    continue
                if (name, m, cfg.gluon) not in best or ms < best[(name, m, cfg.gluon)][0]:
                    best[(name, m, cfg.gluon)] = (ms, cfg)
            bnb_ms = bnb_per_call_ms(x, copies)
            rows.append(dict(shape=name, m=m, ms=bnb_ms, impl="bnb"))
            for gluon in (False, True):
                if (name, m, gluon) in best:
                    ms, cfg = best[(name, m, gluon)]
                    print(f"sweep best {name:8s} M={m:<3d} {ms * 1e3:8.1f} us (bitsandbytes {bnb_ms * 1e3:.1f} us)  "
                          f"{cfg}", flush=True)  # fmt: skip
        del copies
    tuned: dict[bool, dict] = {False: {}, True: {}}  # Triton tiles (TUNED), Gluon tiles (TUNED_MMA)
    for (name, m, gluon), (_, cfg) in best.items():
        n, k = SHAPES[name]
        tuned[gluon][(n, k, m)] = cfg
        if m == 4:
            tuned[gluon][(n, k, 2)] = cfg
    return tuned, rows


# ---------------------------------------------------------------- bench


def matmul_4bit(x, qweight, state):
    from bitsandbytes import matmul_4bit as bnb_matmul_4bit

    return bnb_matmul_4bit(x, qweight, state)


def run_bench(bandwidth: float, quick: bool = False) -> dict:
    """quick: our kernels at M = 1 and 8 only (no bitsandbytes, no dequantize + cuBLAS, no LoRA)."""
    code = nf4_code()
    batches, with_bnb = ((1, 8), False) if quick else (BATCHES, HAS_BNB)
    out: dict = {"per_linear": [], "step": [], "lora": []}
    for name, (n, k) in SHAPES.items():
        copies = rotating_copies(n, k, code)
        floor_ms = copies[0].nbytes / bandwidth * 1e3
        for m in (1, 8) if with_bnb else ():
            ms = bnb_per_call_ms(torch.randn(m, k, device=DEVICE, dtype=torch.float16), copies)
            out["per_linear"].append(dict(impl="bnb", shape=name, m=m, ms=ms, floor_ms=floor_ms))
        for m in batches:
            x = torch.randn(m, k, device=DEVICE, dtype=torch.float16)
            ms = per_call_ms(lambda w, x=x: ours(x, w), copies)
            out["per_linear"].append(dict(impl="ours", shape=name, m=m, ms=ms, floor_ms=floor_ms))
        if not quick:
            x = torch.randn(16, k, device=DEVICE, dtype=torch.float16)
            ms = per_call_ms(lambda w, x=x: F.linear(x, nf4_dequantize(w.qweight, w.absmax, w.code, w.n, w.k)), copies)
            out["per_linear"].append(dict(impl="dequantize+cublas", shape=name, m=16, ms=ms, floor_ms=floor_ms))
        for row in out["per_linear"][-len(batches) - (not quick) - 2 * with_bnb :]:
            print(f"linear {row['impl']:18s} {name:8s} M={row['m']:<3d} {row['ms'] * 1e3:8.1f} us "
                  f"({row['floor_ms'] / row['ms']:.0%} of floor)", flush=True)  # fmt: skip
        del copies
    torch.cuda.empty_cache()

    layers = [{name: random_weight(n, k, code) for name, (n, k) in SHAPES.items()} for _ in range(LAYERS)]
    lm_head = torch.randn(LM_HEAD, device=DEVICE, dtype=torch.float16) * 0.02
    xs = {k: torch.randn(16, k, device=DEVICE, dtype=torch.float16) for k in {k for _, k in SHAPES.values()}}
    step_bytes = sum(w.nbytes for layer in layers for w in layer.values()) + lm_head.numel() * 2
    floor_ms = step_bytes / bandwidth * 1e3
    out["step_bytes"], out["step_floor_ms"] = step_bytes, floor_ms

    def step(m: int, linear) -> None:
        for layer in layers:
            for w in layer.values():
                linear(xs[w.k][:m], w)
        F.linear(xs[LM_HEAD[1]][:m], lm_head)

    states = [{name: w.quant_state() for name, w in layer.items()} for layer in layers] if with_bnb else []
    state_of = {id(w): states[i][name] for i, layer in enumerate(states and layers) for name, w in layer.items()}

    def bnb_linear(x, w):
        return matmul_4bit(x, w.qweight.t(), state_of[id(w)])

    lm_ms = time_graph(lambda: F.linear(xs[LM_HEAD[1]][:1], lm_head))
    out["lm_head_ms_m1"] = lm_ms
    for impl, linear, step_batches in (("bnb", bnb_linear, (1, 8) if with_bnb else ()), ("ours", ours, batches)):
        for m in step_batches:
            ms = guarded(lambda m=m, linear=linear: step(m, linear), reps=10)
            out["step"].append(dict(impl=impl, m=m, ms=ms, floor_ms=floor_ms, floor_fraction=floor_ms / ms))
            print(
                f"step {impl:5s} M={m:<3d} {ms:7.3f} ms  {floor_ms / ms:.0%} of the {floor_ms:.3f} ms floor", flush=True
            )
    base = {row["m"]: row["ms"] for row in out["step"] if row["impl"] == "ours"}

    for setup, (r, targets) in () if quick else LORA_SETUPS.items():
        adapters = [{name: random_adapters(*SHAPES[name], r, SEGMENTS[name], False) for name in targets}
                    for _ in range(LAYERS)]  # fmt: skip
        lora_bytes = sum(a[0][0].numel() * 2 + a[1][0].numel() * 2 for lay in adapters for a in lay.values())
        for m in LORA_BATCHES:
            slot_ids = torch.arange(m, dtype=torch.int32, device=DEVICE)  # each row its own adapter

            def lora_step(fused: bool, m=m, slot_ids=slot_ids, adapters=adapters) -> None:
                for layer, lay in zip(layers, adapters, strict=True):
                    for name, w in layer.items():
                        x = xs[w.k][:m]
                        if name not in lay:
                            ours(x, w)
                            continue
                        a_stack, b_stack, scales, ranks = lay[name]
                        if fused:
                            t = lora_shrink(x, slot_ids, a_stack, ranks, len(SEGMENTS[name]) + 1)
                            ours(x, w, lora=LoraExpand(t, slot_ids, b_stack, scales, ranks, SEGMENTS[name]))
                        else:
                            y = ours(x, w)
                            lora_shrink_expand(x, slot_ids, a_stack, b_stack, scales, ranks, y, SEGMENTS[name])
                F.linear(xs[LM_HEAD[1]][:m], lm_head)

            for fused in (True, False):
                ms = time_graph(lambda fused=fused: lora_step(fused), reps=10)
                row = dict(setup=setup, m=m, fused=fused, ms=ms, base_ms=base[m], overhead=ms / base[m] - 1,
                           lora_bytes_per_row=lora_bytes, extra_bytes_fraction=m * lora_bytes / step_bytes)  # fmt: skip
                out["lora"].append(row)
                print(f"lora {setup:12s} M={m:<2d} fused={fused!s:5s} {ms:7.3f} ms vs base {base[m]:.3f} ms: "
                      f"+{row['overhead']:.1%} (adapter bytes +{row['extra_bytes_fraction']:.1%})", flush=True)  # fmt: skip
    return out


def print_tables(result: dict) -> None:
    bench = result.get("bench")
    if result.get("checks") is not None:
        failed = [c for c in result["checks"] if not c["ok"]]
        print(f"\nchecks: {len(result['checks']) - len(failed)} ok, {len(failed)} failed")
        for c in failed:
            print(f"  FAIL {c['what']} {c['shape']} M={c['m']} rel_err={c['rel_err']:.2e} {c['note']}")
    if not bench:
        return
    print(f"\n{result['device']}  copy bandwidth {result['bandwidth'] / 1e12:.2f} TB/s  "
          f"step bytes {bench['step_bytes'] / 1e9:.2f} GB  floor {bench['step_floor_ms']:.3f} ms  "
          f"lm_head alone M=1 {bench['lm_head_ms_m1']:.3f} ms")  # fmt: skip
    print("per linear (us; % of its own floor)")
    for name in SHAPES:
        cells = [f"{r['impl']}@{r['m']}={r['ms'] * 1e3:.1f} ({r['floor_ms'] / r['ms']:.0%})"
                 for r in bench["per_linear"] if r["shape"] == name]  # fmt: skip
        print(f"  {name:8s} " + "  ".join(cells))
    print("decode step, all linears + lm_head (ms; % of floor)")
    for r in bench["step"]:
        print(f"  {r['impl']:5s} M={r['m']:<3d} {r['ms']:7.3f} ms  {r['floor_fraction']:.0%}")
    print("LoRA overhead vs our base step at the same M (each row its own adapter)")
    for r in bench["lora"]:
        print(f"  {r['setup']:12s} M={r['m']:<2d} {'fused' if r['fused'] else 'separate':8s} {r['ms']:7.3f} ms "
              f"+{r['overhead']:.1%} (adapter bytes +{r['extra_bytes_fraction']:.1%})")  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true")
    parser.add_argument("--sweep", action="store_true")
    parser.add_argument("--bench", action="store_true")
    parser.add_argument("--quick", action="store_true", help="--bench: ours at M = 1 and 8 only, no LoRA")
    parser.add_argument("--sweep-m", type=int, nargs="+", default=SWEEP_M, help="batch sizes the sweep times")
    parser.add_argument("--lookups", type=int, nargs="+", default=LOOKUPS, help="table lookups the sweep tries")
    parser.add_argument("--workers", type=int, default=14, help="processes compiling the sweep's kernels")
    parser.add_argument("--out", type=Path, default=None, help="JSON results")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("bench_kernels: needs a CUDA GPU")
        return 2
    props = torch.cuda.get_device_properties(DEVICE)
    result: dict = {"device": props.name, "sms": props.multi_processor_count, "torch": torch.__version__,
                    "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}  # fmt: skip
    import triton

    result["triton"] = triton.__version__
    started = time.time()
    compile_job = None
    if args.sweep:
        pool = concurrent.futures.ThreadPoolExecutor(1)
        compile_job = pool.submit(precompile, sweep_points(tuple(args.sweep_m), tuple(args.lookups)), args.workers)
    try:
        if args.check:
            result["checks"] = run_checks()
        if compile_job is not None:
            result["compile_failures"] = compile_job.result()
        result["bandwidth"] = copy_bandwidth()
        print(f"copy bandwidth {result['bandwidth'] / 1e12:.2f} TB/s ({time.time() - started:.0f} s)", flush=True)
        if args.sweep:
            tuned, result["sweep"] = run_sweep(result["bandwidth"], tuple(args.sweep_m), tuple(args.lookups))
            for gluon, table in ((False, nf4_configs.TUNED), (True, nf4_configs.TUNED_MMA)):
                table.update(tuned[gluon])
                name = "TUNED_MMA" if gluon else "TUNED"
                result[name.lower()] = {f"{n},{k},{m}": asdict(c) for (n, k, m), c in tuned[gluon].items()}
                print(f"{name} = {{")
                for key, cfg in sorted(tuned[gluon].items()):
                    print(f"    {key}: {cfg!r},")
                print("}", flush=True)
        if args.bench:
            result["bench"] = run_bench(result["bandwidth"], args.quick)
    except Exception:
        result["error"] = traceback.format_exc()
        print(result["error"], flush=True)
    result["seconds"] = time.time() - started
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1, default=str))
    print_tables(result)
    failed = "error" in result or any(not c["ok"] for c in result.get("checks", []))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
