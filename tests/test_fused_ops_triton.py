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
    rms_norm_triton,
    rope_kv_write_triton,
    silu_mul_triton,
)
from engine.rope import RotaryEmbedding  # noqa: E402

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
DTYPES = [torch.float32, torch.float16]
TABLE_LEN = 64


def _randn(*shape: int, dtype: torch.dtype, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)).to(device=DEVICE, dtype=dtype)


def _assert_close(got: torch.Tensor, expected: torch.Tensor) -> None:
    assert got.dtype == expected.dtype and got.shape == expected.shape
    tol = 1e-5 if got.dtype == torch.float32 else 2e-3
    torch.testing.assert_close(got, expected, rtol=tol, atol=tol, equal_nan=True)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", [(1, 64), (5, 200), (3, 4096), (2, 8192)])
def test_rms_norm(shape: tuple[int, int], dtype: torch.dtype) -> None:
    x = _randn(*shape, dtype=dtype, seed=0) * 3
    weight = _randn(shape[1], dtype=dtype, seed=1)
    _assert_close(rms_norm_triton(x, weight, 1e-5), rms_norm_reference(x, weight, 1e-5))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", [(1, 128), (4, 200), (3, 4096)])
def test_add_rms_norm(shape: tuple[int, int], dtype: torch.dtype) -> None:
    h, delta = _randn(*shape, dtype=dtype, seed=2) * 4, _randn(*shape, dtype=dtype, seed=3)
    weight = _randn(shape[1], dtype=dtype, seed=4)
    h_before = h.clone()
    h_new, y = add_rms_norm_triton(h, delta, weight, 1e-6)
    expected_h, expected_y = add_rms_norm_reference(h, delta, weight, 1e-6)
    assert torch.equal(h_new, h + delta)  # one fp32 add, one rounding: bit-identical to torch
    assert torch.equal(h_new, expected_h)
    _assert_close(y, expected_y)
    assert torch.equal(h, h_before)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", [(1, 64), (3, 1000), (2, 2500)])
def test_silu_mul(shape: tuple[int, int], dtype: torch.dtype) -> None:
    t, i = shape
    gate_up = _randn(t, 2 * i, dtype=dtype, seed=5) * 4
    _assert_close(silu_mul_triton(gate_up, i), silu_mul_reference(gate_up, i))


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
