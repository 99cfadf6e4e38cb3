"""Does an NF4 matmul get faster when its weights were prefetched into L2 while the bus was idle?

Per Llama-3-8B shape and M = 1 / 8, us per call (weights rotate over copies larger than L2):
  cold / hot          the matmul on rotating copies / on one copy (L2-resident where it fits)
  idle S              a S-us spin (the small kernels between two matmuls), then the matmul
  idle S + prefetch   the same with the weights' prefetch issued before the spin
  pair A -> B         two matmuls in turn, plain / with B's prefetch on a side stream beside A

python -m bench.probe_l2_prefetch          # GPU only
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from bench.bench_kernels import SHAPES, Nf4Weight, nf4_code, ours, rotating_copies, time_graph

PAIRS = (("qkv", "o"), ("o", "gate_up"), ("gate_up", "down"), ("down", "qkv"))
IDLE_US = (0, 4, 10)
LINE, PREFETCH_BLOCK = 128, 1024
_PREFETCH_LINE = tl.constexpr("prefetch.global.L2::evict_last [$1]; mov.u32 $0, 0;")


@triton.jit
def _prefetch_kernel(ptr, num_lines, LINE_BYTES: tl.constexpr, BLOCK: tl.constexpr):
    """Each lane asks L2 for one 128-byte line (CCTL.E.PML2 in the SASS); nothing waits for the bytes."""
    lines = tl.minimum(tl.program_id(0) * BLOCK + tl.arange(0, BLOCK), num_lines - 1).to(tl.int64)  # [BLOCK]
    tl.inline_asm_elementwise(_PREFETCH_LINE, "=r,l", [ptr + lines * LINE_BYTES], dtype=tl.int32, is_pure=False,
                              pack=1)  # fmt: skip


def prefetch_l2(buffer: torch.Tensor, max_bytes: int | None = None) -> None:
    nbytes = buffer.numel() * buffer.element_size()
    num_lines = triton.cdiv(nbytes if max_bytes is None else min(nbytes, max_bytes), LINE)
    _prefetch_kernel[(triton.cdiv(num_lines, PREFETCH_BLOCK),)](buffer, num_lines, LINE_BYTES=LINE,
                                                                 BLOCK=PREFETCH_BLOCK, num_warps=4)  # fmt: skip


def cycles_per_us() -> float:
    cycles = 200_000
    return cycles / (time_graph(lambda: torch.cuda._sleep(cycles)) * 1e3)


def prefetch(w: Nf4Weight, max_bytes: int | None = None) -> None:
    prefetch_l2(w.qweight, max_bytes)
    prefetch_l2(w.absmax, None if max_bytes is None else max_bytes // 8)


def per_call_us(fn, copies: list[Nf4Weight]) -> float:
    return time_graph(lambda: [fn(w) for w in copies]) / len(copies) * 1e3


def shape_row(x: torch.Tensor, copies: list[Nf4Weight], cpu: float) -> dict[str, float]:
    row = {
        "cold": per_call_us(lambda w: ours(x, w), copies),
        "hot": per_call_us(lambda w: ours(x, copies[0]), copies),
    }
    for idle in IDLE_US:
        spin = int(idle * cpu)
        row[f"idle {idle}"] = per_call_us(lambda w, spin=spin: (torch.cuda._sleep(spin), ours(x, w)), copies) - idle
        row[f"idle {idle} + prefetch"] = (
            per_call_us(lambda w, spin=spin: (prefetch(w), torch.cuda._sleep(spin), ours(x, w)), copies) - idle
        )
    return row


def pair_us(xa: torch.Tensor, a: list[Nf4Weight], xb: torch.Tensor, b: list[Nf4Weight]) -> tuple[float, float]:
    """Two matmuls in turn: plain, and with B's first 32 MB prefetched on a side stream beside A."""
    n = min(len(a), len(b))
    side = torch.cuda.Stream()

    def plain(i: int) -> None:
        ours(xa, a[i])
        ours(xb, b[i])

    def overlapped(i: int) -> None:
        main_stream = torch.cuda.current_stream()
        side.wait_stream(main_stream)
        with torch.cuda.stream(side):
            prefetch(b[i], 32 * 2**20)
        ours(xa, a[i])
        main_stream.wait_stream(side)
        ours(xb, b[i])

    t_plain = time_graph(lambda: [plain(i) for i in range(n)]) / n * 1e3
    return t_plain, time_graph(lambda: [overlapped(i) for i in range(n)]) / n * 1e3


def main() -> None:
    code = nf4_code()
    weights = {name: rotating_copies(*shape, code) for name, shape in SHAPES.items()}
    cpu = cycles_per_us()
    print(f"sleep: {cpu:.0f} cycles per us", flush=True)
    for m in (1, 8):
        x = {name: torch.randn(m, k, device="cuda", dtype=torch.float16) for name, (_, k) in SHAPES.items()}
        for name, copies in weights.items():
            row = shape_row(x[name], copies, cpu)
            print(f"M={m} {name:8s} " + "  ".join(f"{k}: {v:6.2f}" for k, v in row.items()), flush=True)
        for a, b in PAIRS:
            plain, over = pair_us(x[a], weights[a], x[b], weights[b])
            print(f"M={m} pair {a} -> {b}: plain {plain:6.2f} us, B prefetched beside A {over:6.2f} us", flush=True)


if __name__ == "__main__":
    main()
