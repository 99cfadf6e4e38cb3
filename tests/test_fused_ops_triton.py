"""Fused decode-op Triton kernels against the torch references. They need CUDA, or the Triton interpreter on
the CPU (`TRITON_INTERPRET=1` with triton installed); otherwise this module is skipped."""

from __future__ import annotations

import importlib.util
import os

import pytest
import torch

HAS_TRITON = importlib.util.find_spec("triton") is not None
INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
if not HAS_TRITON:
    pytest.skip("Triton kernels: triton is not installed (CUDA-only path)", allow_module_level=True)
if not (torch.cuda.is_available() or INTERPRET):
    pytest.skip("Triton kernels: no CUDA device and TRITON_INTERPRET=1 is not set", allow_module_level=True)

from engine.kernels.fused_ops_reference import (  # noqa: E402
    add_rms_norm_reference,
    rms_norm_reference,
    rope_kv_write_reference,
    silu_mul_reference,
)
from engine.kernels.fused_ops_triton import (  # noqa: E402
    add_rms_norm_triton,
    rope_kv_write_triton,
    silu_mul_triton,
)
from engine.kernels.lora_reference import lora_shrink_reference  # noqa: E402
from engine.kernels.lora_types import LoraShrink  # noqa: E402
from engine.lora.stack import LoraStack, TokenLora  # noqa: E402
from engine.rope import RotaryEmbedding  # noqa: E402

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
DTYPES = [torch.float32, torch.float16]
TABLE_LEN = 64


def _randn(*shape: int, dtype: torch.dtype, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)).to(device=DEVICE, dtype=dtype)


def _assert_close(got: torch.Tensor, expected: torch.Tensor, fp16_tol: float = 2e-3) -> None:
    assert got.dtype == expected.dtype and got.shape == expected.shape
    tol = 1e-5 if got.dtype == torch.float32 else fp16_tol
    torch.testing.assert_close(got, expected, rtol=tol, atol=tol, equal_nan=True)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", [(1, 64), (5, 200), (3, 4096), (2, 8192)])
def test_rms_norm(shape: tuple[int, int], dtype: torch.dtype) -> None:
    x = _randn(*shape, dtype=dtype, seed=0) * 3
    weight = _randn(shape[1], dtype=dtype, seed=1)
    _assert_close(add_rms_norm_triton(x, None, weight, 1e-5)[1], rms_norm_reference(x, weight, 1e-5))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", [(1, 128), (4, 200), (3, 4096)])
def test_add_rms_norm(shape: tuple[int, int], dtype: torch.dtype) -> None:
    h, delta = _randn(*shape, dtype=dtype, seed=2) * 4, _randn(*shape, dtype=dtype, seed=3)
    weight = _randn(shape[1], dtype=dtype, seed=4)
    h_before = h.clone()
    h_new, y, _ = add_rms_norm_triton(h, delta, weight, 1e-6)
    expected_h, expected_y, _ = add_rms_norm_reference(h, delta, weight, 1e-6)
    assert torch.equal(h_new, h + delta)  # one fp32 add, one rounding: bit-identical to torch
    assert torch.equal(h_new, expected_h)
    _assert_close(y, expected_y)
    assert torch.equal(h, h_before)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", [(1, 64), (3, 1000), (2, 2500)])
def test_silu_mul(shape: tuple[int, int], dtype: torch.dtype) -> None:
    t, i = shape
    gate_up = _randn(t, 2 * i, dtype=dtype, seed=5) * 4
    _assert_close(silu_mul_triton(gate_up, i)[0], silu_mul_reference(gate_up, i)[0])


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize(
    ("n", "slots", "positions", "heads"),
    [
        (1, 1, [0], (4, 2, 64)),
        (3, 5, [TABLE_LEN - 1, 7, TABLE_LEN - 2], (4, 2, 128)),
        (4, 4, [5, 5, 0, TABLE_LEN - 1], (2, 2, 64)),
        (2, 3, [TABLE_LEN - 1, 33], (8, 1, 128)),
    ],
)
def test_rope_kv_write(
    n: int, slots: int, positions: list[int], heads: tuple[int, int, int], dtype: torch.dtype
) -> None:
    num_heads, num_kv_heads, head_dim = heads
    table = RotaryEmbedding(head_dim, TABLE_LEN, 500000.0, None, DEVICE, torch.float16)
    qkv = _randn(n, (num_heads + 2 * num_kv_heads) * head_dim, dtype=dtype, seed=n) * 2
    pos = torch.tensor(positions, device=DEVICE)
    caches = [torch.full((slots, num_kv_heads, TABLE_LEN, head_dim), float("nan"), dtype=dtype, device=DEVICE)]
    caches.append(caches[0].clone())  # k, v
    expected_caches = [c.clone() for c in caches]
    args = (num_heads, num_kv_heads, head_dim)

    q = rope_kv_write_triton(qkv, pos, table.cos, table.sin, *caches, *args)
    expected_q = rope_kv_write_reference(qkv, pos, table.cos, table.sin, *expected_caches, *args)
    _assert_close(q, expected_q)
    _assert_close(caches[0], expected_caches[0])
    assert torch.equal(caches[1].nan_to_num(7.0), expected_caches[1].nan_to_num(7.0))  # v is copied as is
    written = torch.zeros(caches[0].shape[:3], dtype=torch.bool, device=DEVICE)
    written[torch.arange(n, device=DEVICE), :, pos] = True
    for cache in caches:
        assert not cache[written].isnan().any()
        assert cache[~written].isnan().all()


def test_rope_kv_write_skips_a_position_past_the_table() -> None:
    table = RotaryEmbedding(64, TABLE_LEN, 10000.0, None, DEVICE, torch.float16)
    qkv = _randn(2, 4 * 64, dtype=torch.float16, seed=11)
    caches = [torch.full((2, 1, TABLE_LEN, 64), float("nan"), dtype=torch.float16, device=DEVICE) for _ in "kv"]
    pos = torch.tensor([TABLE_LEN, 3], device=DEVICE)
    rope_kv_write_triton(qkv, pos, table.cos, table.sin, *caches, 2, 1, 64)
    for cache in caches:
        assert cache[0].isnan().all()
        assert not cache[1, :, 3].isnan().any()


def _token_lora(in_features: int, widths: list[int], dtype: torch.dtype, seed: int, max_rank: int = 32) -> TokenLora:
    """Rows on slots 1, none, 0, 1 of a stack whose slot 0 has rank 16 (at most max_rank) and slot 1 rank 5, both
    padded to max_rank with noise where a stack holds zeros: the kernels must apply each slot's rank themselves."""
    gen = torch.Generator().manual_seed(seed)
    starts = [sum(widths[:i]) for i in range(len(widths))]
    stack = LoraStack(3, max_rank, in_features, list(zip(starts, widths, strict=True)), DEVICE, dtype)
    for slot, rank in ((0, min(16, max_rank)), (1, 5)):
        stack.write(slot, {g: (torch.randn(rank, in_features, generator=gen) / 8, torch.randn(w, rank, generator=gen),
                               0.5 + g) for g, w in enumerate(widths)})  # fmt: skip
        for g in range(len(widths)):
            pad = stack.a[slot, g * max_rank + rank : (g + 1) * max_rank]
            pad.copy_(torch.randn(pad.shape, generator=gen))
        stack.b[slot, rank:].copy_(torch.randn(stack.b[slot, rank:].shape, generator=gen))
    return TokenLora(stack, torch.tensor([1, -1, 0, 1], dtype=torch.int32, device=DEVICE))


def _assert_close_after_expand(got: torch.Tensor, expected: torch.Tensor) -> None:
    # fp16: the expand's sum may round its input an ulp the other way, which the op can magnify ~10x
    _assert_close(got, expected, fp16_tol=1e-2)


def _assert_shrink_of(t: torch.Tensor, x: torch.Tensor, shrink: LoraShrink) -> torch.Tensor:
    """t: partial sums over K slices of the shrink of the op's own output x; their totals [M, G, bound] must
    match (entries past the rank bound are left unwritten). Returns those totals."""
    expected = lora_shrink_reference(x, *shrink[:4])
    m, g = x.shape[0], shrink.num_segments
    assert t.shape[0] == m and t.shape[2] == expected.shape[2]
    total = t.sum(1).view(m, g, -1)[..., : shrink.rank_bound]
    torch.testing.assert_close(total, expected.sum(1).view(m, g, -1)[..., : shrink.rank_bound], rtol=1e-4, atol=1e-4)
    return total


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("d", [1000, 4096])
@pytest.mark.parametrize(("with_delta", "max_rank"), [(True, 32), (False, 32), (True, 8)])
def test_add_rms_norm_with_the_next_projections_shrink(
    d: int, with_delta: bool, max_rank: int, dtype: torch.dtype
) -> None:
    h, delta = _randn(4, d, dtype=dtype, seed=20) * 2, _randn(4, d, dtype=dtype, seed=21) if with_delta else None
    weight = _randn(d, dtype=dtype, seed=22)
    shrink = _token_lora(d, [96, 32, 32], dtype, seed=23, max_rank=max_rank).shrink()  # q, k, v segments
    h_new, y, t = add_rms_norm_triton(h, delta, weight, 1e-5, shrink)
    expected_h, expected_y, expected_t = add_rms_norm_reference(h, delta, weight, 1e-5, shrink)
    assert torch.equal(h_new, expected_h)
    _assert_close(y, expected_y)
    total = _assert_shrink_of(t, y, shrink)
    assert (total[1] == 0).all() and expected_t[0].abs().sum() > 0  # the row without adapter, and a live one
    assert (total[[0, 3], :, 5:] == 0).all()  # slot 1's rank 5 in each segment


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("inter", [64, 1000])
def test_silu_mul_with_gate_up_expand_and_down_shrink(inter: int, dtype: torch.dtype) -> None:
    gate_up = _randn(4, 2 * inter, dtype=dtype, seed=24) * 2
    up_lora = _token_lora(32, [inter, inter], dtype, seed=25)
    expand = up_lora.expand(torch.randn(4, 3, 2 * 32, generator=torch.Generator().manual_seed(26)).to(DEVICE))
    shrink = _token_lora(inter, [48], dtype, seed=27).shrink()
    for lora, down in ((expand, shrink), (expand, None), (None, shrink)):
        act, t = silu_mul_triton(gate_up, inter, lora, down)
        expected_act, _ = silu_mul_reference(gate_up, inter, lora, down)
        _assert_close_after_expand(act, expected_act)
        if down is None:
            assert t is None
        else:
            _assert_shrink_of(t, act, down)
    assert not torch.equal(silu_mul_reference(gate_up, inter, expand)[0], silu_mul_reference(gate_up, inter)[0])


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("heads", [(4, 2, 64), (2, 1, 128)])
def test_rope_kv_write_with_the_qkv_expand(heads: tuple[int, int, int], dtype: torch.dtype) -> None:
    num_heads, num_kv_heads, head_dim = heads
    table = RotaryEmbedding(head_dim, TABLE_LEN, 500000.0, None, DEVICE, torch.float16)
    widths = [num_heads * head_dim, num_kv_heads * head_dim, num_kv_heads * head_dim]
    qkv = _randn(4, sum(widths), dtype=dtype, seed=28)
    lora = _token_lora(32, widths, dtype, seed=29)
    expand = lora.expand(torch.randn(4, 2, 3 * 32, generator=torch.Generator().manual_seed(30)).to(DEVICE))
    pos = torch.tensor([3, 9, 0, TABLE_LEN - 1], device=DEVICE)
    caches = [torch.zeros((4, num_kv_heads, TABLE_LEN, head_dim), dtype=dtype, device=DEVICE) for _ in "kv"]
    expected_caches = [c.clone() for c in caches]
    q = rope_kv_write_triton(qkv, pos, table.cos, table.sin, *caches, *heads, expand)
    expected_q = rope_kv_write_reference(qkv, pos, table.cos, table.sin, *expected_caches, *heads, expand)
    _assert_close_after_expand(q, expected_q)
    for cache, expected in zip(caches, expected_caches, strict=True):
        _assert_close_after_expand(cache, expected)
    plain = rope_kv_write_triton(qkv, pos, table.cos, table.sin, *[c.clone() for c in caches], *heads)
    assert torch.equal(q[1], plain[1]) and not torch.equal(q[0], plain[0])  # row 1 has no adapter
