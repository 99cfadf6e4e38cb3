"""Multi-LoRA reference path (the CPU path of engine.kernels) against an explicit per-row loop."""

from __future__ import annotations

import pytest
import torch
from bitsandbytes.functional import dequantize_4bit, quantize_4bit

from engine.kernels import LoraExpand, lora_reference, lora_shrink, lora_shrink_expand, nf4_matmul


def _adapters(s: int, r: int, k: int, n: int, seed: int) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(seed)
    a_stack = torch.randn(s, r, k, generator=gen).to(torch.float16)  # [S, R, K]
    b_stack = torch.randn(s, r, n, generator=gen).to(torch.float16)  # [S, R, N]
    scales = torch.rand(s, generator=gen) + 0.5  # [S]
    ranks = torch.randint(1, r + 1, (s,), generator=gen, dtype=torch.int32)  # [S]
    return a_stack, b_stack, scales, ranks


def _per_row_loop(x, slot_ids, a_stack, b_stack, scales, ranks, y) -> torch.Tensor:
    out = y.double().clone()
    for row, slot in enumerate(slot_ids.tolist()):
        if slot < 0:
            continue
        r = int(ranks[slot])
        a = a_stack[slot, :r].double()  # [r, K]
        b = b_stack[slot, :r].double().t()  # [N, r]
        out[row] += float(scales[slot]) * (b @ (a @ x[row].double()))
    return out


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_shrink_expand_matches_a_per_row_loop(seed: int) -> None:
    s, r, k, n, m = 4, 16, 96, 40, 7
    a_stack, b_stack, scales, ranks = _adapters(s, r, k, n, seed)
    gen = torch.Generator().manual_seed(100 + seed)
    x = torch.randn(m, k, generator=gen)  # [M, K]
    slot_ids = torch.tensor([0, -1, 3, 1, 1, -1, 2], dtype=torch.int32)
    y = torch.randn(m, n, generator=gen)  # [M, N]
    expected = _per_row_loop(x, slot_ids, a_stack, b_stack, scales, ranks, y)
    got = lora_shrink_expand(x, slot_ids, a_stack, b_stack, scales, ranks, y.clone())
    assert ((got.double() - expected).norm() / (expected - y.double()).norm()).item() < 1e-5
    assert torch.equal(got[1], y[1]) and torch.equal(got[5], y[5])


def test_rank_padding_is_never_read() -> None:
    s, r, k, n = 2, 8, 64, 16
    a_stack, b_stack, scales, _ = _adapters(s, r, k, n, seed=3)
    ranks = torch.tensor([3, 5], dtype=torch.int32)
    a_stack[0, 3:] = float("nan")
    a_stack[1, 5:] = float("inf")
    b_stack[0, 3:] = float("nan")
    b_stack[1, 5:] = float("nan")
    x = torch.randn(2, k)
    slot_ids = torch.tensor([0, 1], dtype=torch.int32)
    got = lora_reference(x, slot_ids, a_stack, b_stack, scales, ranks, torch.zeros(2, n))
    expected = _per_row_loop(x, slot_ids, a_stack, b_stack, scales, ranks, torch.zeros(2, n))
    assert torch.isfinite(got).all()
    assert torch.allclose(got.double(), expected, rtol=1e-5, atol=1e-5)


def test_expand_into_a_column_slice_of_a_wider_output() -> None:
    s, r, k, n = 3, 4, 32, 12
    a_stack, b_stack, scales, ranks = _adapters(s, r, k, n, seed=4)
    x = torch.randn(3, k)
    slot_ids = torch.tensor([2, 0, -1], dtype=torch.int32)
    wide = torch.randn(3, 3 * n)  # a fused qkv-style output; LoRA goes into the middle slice
    before = wide.clone()
    lora_shrink_expand(x, slot_ids, a_stack, b_stack, scales, ranks, wide[:, n : 2 * n])
    expected = _per_row_loop(x, slot_ids, a_stack, b_stack, scales, ranks, before[:, n : 2 * n])
    assert torch.allclose(wide[:, n : 2 * n].double(), expected, rtol=1e-5, atol=1e-5)
    assert torch.equal(wide[:, :n], before[:, :n]) and torch.equal(wide[:, 2 * n :], before[:, 2 * n :])


def test_fused_expand_in_nf4_matmul_equals_base_plus_lora() -> None:
    s, r, k, n = 3, 8, 128, 24
    weight = torch.randn(n, k).to(torch.float16)
    qweight, state = quantize_4bit(weight, quant_type="nf4", blocksize=64, compress_statistics=False)
    a_stack, b_stack, scales, ranks = _adapters(s, r, k, n, seed=5)
    x = torch.randn(4, k)
    slot_ids = torch.tensor([1, -1, 0, 2], dtype=torch.int32)
    t = lora_shrink(x, slot_ids, a_stack, ranks)
    got = nf4_matmul(x, qweight, state.absmax, state.code, n, k, lora=LoraExpand(t, slot_ids, b_stack, scales, ranks))
    base = x.double() @ dequantize_4bit(qweight, state).double().t()
    expected = _per_row_loop(x, slot_ids, a_stack, b_stack, scales, ranks, base)
    assert ((got.double() - expected).norm() / expected.norm()).item() < 1e-5


def test_mismatched_shapes_name_the_argument() -> None:
    a_stack, b_stack, scales, ranks = _adapters(2, 4, 32, 8, seed=6)
    x, y = torch.randn(3, 32), torch.zeros(3, 8)
    with pytest.raises(ValueError, match="slot_ids"):
        lora_reference(x, torch.tensor([0, 1, 0]), a_stack, b_stack, scales, ranks, y)
    with pytest.raises(ValueError, match="A_stack"):
        lora_reference(torch.randn(3, 16), torch.zeros(3, dtype=torch.int32), a_stack, b_stack, scales, ranks, y)
    with pytest.raises(ValueError, match="B_stack"):
        lora_reference(x, torch.zeros(3, dtype=torch.int32), a_stack, b_stack[..., :4], scales, ranks, y)


def test_fused_projection_segments_match_separate_adapters() -> None:
    k, r, s, widths = 64, 4, 3, (32, 16, 16)  # q, k, v output widths of a fused qkv projection
    parts = [_adapters(s, r, k, w, seed=10 + i) for i, w in enumerate(widths)]
    ranks = torch.tensor([2, 4, 3], dtype=torch.int32)
    scales = torch.tensor([1.0, 0.5, 2.0])
    a_fused = torch.cat([p[0] for p in parts], dim=1)  # [S, 3R, K]
    b_fused = torch.cat([p[1] for p in parts], dim=2)  # [S, R, N]
    x = torch.randn(4, k)
    slot_ids = torch.tensor([2, 0, -1, 1], dtype=torch.int32)
    y = torch.randn(4, sum(widths))
    got = lora_shrink_expand(x, slot_ids, a_fused, b_fused, scales, ranks, y.clone(), segments=(32, 48))
    expected = torch.cat(
        [
            _per_row_loop(x, slot_ids, p[0], p[1], scales, ranks, y[:, start : start + w])
            for p, start, w in zip(parts, (0, 32, 48), widths, strict=True)
        ],
        dim=1,
    )
    assert torch.allclose(got.double(), expected, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="segments"):
        lora_reference(x, slot_ids, a_fused, b_fused, scales, ranks, y, segments=(48, 32))
