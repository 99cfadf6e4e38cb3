"""What the fused LoRA halves cost inside the decode ops, per kernel call at Llama-3-8B shapes (rank 16 in a
rank-64 stack of 8 slots, each row its own slot), each call on the next of several adapter copies so they come
from memory, not L2. Also the separate LoRA kernels and the NF4 epilogue's expand, for comparison.

python -m bench.probe_lora_fusion          # GPU only
"""

from __future__ import annotations

import torch

import engine.kernels.fused_ops_triton as fused
import engine.kernels.lora_triton as lora_triton
from bench.bench_kernels import SHAPES, nf4_code, ours, random_weight, time_graph
from engine.kernels import LoraExpand, LoraShrink, lora_expand, lora_shrink, lora_shrink_expand
from engine.kernels.decode_attention import decode_attention
from engine.rope import RotaryEmbedding

SLOTS, MAX_RANK, RANK, COPIES = 8, 64, 16, 12
D, INTER, HEADS, KV_HEADS, HEAD_DIM = 4096, 14336, 32, 8, 128


def stacks(n: int, k: int, groups: int) -> list[tuple[torch.Tensor, ...]]:
    """COPIES of (A [S, G*R, K], B [S, R, N], scales, ranks), rank RANK of MAX_RANK."""
    out = []
    for _ in range(COPIES):
        a = torch.zeros(SLOTS, groups * MAX_RANK, k, device="cuda", dtype=torch.float16)
        for g in range(groups):
            a[:, g * MAX_RANK : g * MAX_RANK + RANK].normal_(0, 0.05)
        b = torch.zeros(SLOTS, MAX_RANK, n, device="cuda", dtype=torch.float16)
        b[:, :RANK].normal_(0, 0.05)
        ranks = torch.full((SLOTS,), RANK, dtype=torch.int32, device="cuda")
        out.append((a, b, torch.ones(SLOTS, device="cuda"), ranks))
    return out


def us(fn_of_copy) -> float:
    return time_graph(lambda: [fn_of_copy(i) for i in range(COPIES)]) / COPIES * 1e3


def main() -> None:
    sts = {
        "qkv": stacks(6144, D, 3),
        "gate_up": stacks(2 * INTER, D, 2),
        "o": stacks(D, D, 1),
        "down": stacks(D, INTER, 1),
    }
    for m in (1, 8):
        for name, value in probe(m, sts).items():
            print(f"M={m} {name:42s} {value:7.2f} us", flush=True)


def probe(m: int, sts: dict[str, list[tuple[torch.Tensor, ...]]]) -> dict[str, float]:
    table = RotaryEmbedding(HEAD_DIM, 4096, 500000.0, None, "cuda", torch.float16)
    caches = [torch.zeros(8, KV_HEADS, 4096, HEAD_DIM, device="cuda", dtype=torch.float16) for _ in "kv"]
    down_w = [random_weight(*SHAPES["down"], nf4_code()) for _ in range(COPIES)]
    o_w = [random_weight(*SHAPES["o"], nf4_code()) for _ in range(COPIES)]
    w = torch.randn(D, device="cuda", dtype=torch.float16)
    slots = torch.arange(m, dtype=torch.int32, device="cuda")
    h, delta = torch.randn(m, D, device="cuda", dtype=torch.float16), torch.randn(m, D, device="cuda").half()
    gate_up = torch.randn(m, 2 * INTER, device="cuda", dtype=torch.float16)
    qkv = torch.randn(m, 6144, device="cuda", dtype=torch.float16)
    act = torch.randn(m, INTER, device="cuda", dtype=torch.float16)
    rope_args = (torch.arange(m, device="cuda") + 100, table.cos, table.sin, *caches, HEADS, KV_HEADS, HEAD_DIM)

    def shrink(name: str, i: int) -> LoraShrink:
        a, _, _, ranks = sts[name][i]
        return LoraShrink(slots, a, ranks, a.shape[1] // MAX_RANK, RANK)

    def expand(name: str, i: int, t: torch.Tensor, segments: tuple[int, ...] = ()) -> LoraExpand:
        _, b, scales, ranks = sts[name][i]
        return LoraExpand(t, slots, b, scales, ranks, segments, RANK)

    def silu(i: int, e: bool, s: bool):
        lora = expand("gate_up", i, t_gu, (INTER,)) if e else None
        return fused.silu_mul_triton(gate_up, INTER, lora, shrink("down", i) if s else None)

    rows = {
        "norm": us(lambda i: fused.add_rms_norm_triton(h, delta, w, 1e-5)),
        "norm + qkv shrink": us(lambda i: fused.add_rms_norm_triton(h, delta, w, 1e-5, shrink("qkv", i))),
        "norm + gate_up shrink": us(lambda i: fused.add_rms_norm_triton(h, delta, w, 1e-5, shrink("gate_up", i))),
        "rope": us(lambda i: fused.rope_kv_write_triton(qkv, *rope_args)),
    }
    t_qkv = torch.randn(m, 8, 3 * MAX_RANK, device="cuda")
    rows["rope + qkv expand"] = us(
        lambda i: fused.rope_kv_write_triton(qkv, *rope_args, expand("qkv", i, t_qkv, (4096, 5120)))
    )
    t_gu = torch.randn(m, 8, 2 * MAX_RANK, device="cuda")
    rows["silu"] = us(lambda i: silu(i, False, False))
    base_block = fused.LORA_SILU_MUL_BLOCK
    for block in (256, 512, 1024):
        fused.LORA_SILU_MUL_BLOCK = block
        for label, e, s in (("expand", True, False), ("shrink", False, True), ("both", True, True)):
            rows[f"silu + {label} block {block}"] = us(lambda i, e=e, s=s: silu(i, e, s))
    fused.LORA_SILU_MUL_BLOCK = base_block
    rows["o shrink kernel"] = us(lambda i: lora_shrink(h, slots, sts["o"][i][0], sts["o"][i][3]))
    q = torch.randn(m, HEADS, HEAD_DIM, device="cuda", dtype=torch.float16)
    lengths = torch.full((m,), 200, dtype=torch.int32, device="cuda")
    rows["decode attention, kv 256"] = us(lambda i: decode_attention(q, *caches, lengths, 256))
    rows["decode attention + o shrink, kv 256"] = us(
        lambda i: decode_attention(q, *caches, lengths, 256, shrink=shrink("o", i))
    )
    y = torch.randn(m, D, device="cuda", dtype=torch.float16)
    base_k = lora_triton.ONE_PASS_BLOCK_K
    for block_k in (1024, 2048):
        lora_triton.ONE_PASS_BLOCK_K = block_k
        rows[f"o shrink + expand in one pass, K block {block_k}"] = us(
            lambda i: lora_shrink_expand(h, slots, *sts["o"][i], y, (), RANK)
        )
    lora_triton.ONE_PASS_BLOCK_K = base_k
    for splits in (8, 28, 32):
        t = torch.randn(m, splits, MAX_RANK, device="cuda")
        rows[f"expand kernel, {splits} splits"] = us(lambda i, t=t: lora_expand(*expand("o", i, t)[:5], y))
        rows[f"down nf4 + epilogue expand, {splits} splits"] = us(
            lambda i, t=t: ours(act, down_w[i], lora=expand("down", i, t))
        )
    rows["down nf4"] = us(lambda i: ours(act, down_w[i]))
    rows["o nf4"] = us(lambda i: ours(h, o_w[i]))
    for splits in (8, 32):  # the shrink kernel's, decode attention's (one per head)
        t = torch.randn(m, splits, MAX_RANK, device="cuda")
        rows[f"o nf4 + epilogue expand, {splits} splits"] = us(lambda i, t=t: ours(h, o_w[i], lora=expand("o", i, t)))
    return rows


if __name__ == "__main__":
    main()
