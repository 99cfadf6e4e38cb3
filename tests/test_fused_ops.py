"""Fused decode ops on the CPU (the torch references behind engine.kernels.fused_ops) against independent
formulas: transformers' LlamaRMSNorm and apply_rotary_pos_emb, and silu written out in float64."""

from __future__ import annotations

import pytest
import torch
from transformers.models.llama.modeling_llama import LlamaRMSNorm, apply_rotary_pos_emb

from engine.kernels.fused_ops import add_rms_norm, rope_kv_write, silu_mul
from engine.rope import RotaryEmbedding

DTYPES = [torch.float32, torch.float16]


def _randn(*shape: int, dtype: torch.dtype, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)).to(dtype)


def _hf_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    norm = LlamaRMSNorm(x.shape[1], eps=eps).to(x.dtype)
    with torch.no_grad():
        norm.weight.copy_(weight)
        return norm(x)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", [(1, 64), (5, 200), (3, 4096)])
def test_rms_norm_matches_transformers(shape: tuple[int, int], dtype: torch.dtype) -> None:
    x = _randn(*shape, dtype=dtype, seed=0) * 3
    weight = _randn(shape[1], dtype=dtype, seed=1)
    h_new, y, t = add_rms_norm(x, None, weight, 1e-5)
    assert h_new is x and t is None
    assert torch.equal(y, _hf_norm(x, weight, 1e-5))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_add_rms_norm_returns_the_sum_and_its_norm(dtype: torch.dtype) -> None:
    h, delta = _randn(4, 96, dtype=dtype, seed=2), _randn(4, 96, dtype=dtype, seed=3)
    weight = _randn(96, dtype=dtype, seed=4)
    h_before = h.clone()
    h_new, y, _ = add_rms_norm(h, delta, weight, 1e-6)
    assert torch.equal(h_new, h + delta)
    assert torch.equal(y, _hf_norm(h + delta, weight, 1e-6))
    assert torch.equal(h, h_before)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", [(1, 64), (3, 2500)])
def test_silu_mul_matches_the_formula(shape: tuple[int, int], dtype: torch.dtype) -> None:
    t, i = shape
    gate_up = _randn(t, 2 * i, dtype=dtype, seed=5) * 4
    g, u = gate_up.double()[:, :i], gate_up.double()[:, i:]
    expected = g / (1 + torch.exp(-g)) * u
    act, shrunk = silu_mul(gate_up, i)
    assert shrunk is None
    assert act.shape == (t, i) and act.dtype == dtype
    tol = 1e-6 if dtype == torch.float32 else 1e-3  # fp16: one rounding of the result
    torch.testing.assert_close(act.double(), expected, rtol=tol, atol=tol)


def _rope_case(n: int, slots: int, positions: list[int], heads: tuple[int, int, int], dtype: torch.dtype, seed: int):
    num_heads, num_kv_heads, head_dim = heads
    table = RotaryEmbedding(head_dim, 32, 500000.0, None, torch.device("cpu"), torch.float16)
    qkv = _randn(n, (num_heads + 2 * num_kv_heads) * head_dim, dtype=dtype, seed=seed)
    cache_shape = (slots, num_kv_heads, 32, head_dim)
    k_cache = torch.full(cache_shape, float("nan"), dtype=dtype)
    v_cache = torch.full(cache_shape, float("nan"), dtype=dtype)
    return qkv, torch.tensor(positions), table, k_cache, v_cache


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize(
    ("n", "slots", "positions", "heads"),
    [(1, 1, [0], (4, 2, 64)), (3, 5, [31, 7, 30], (4, 2, 128)), (2, 2, [5, 5], (2, 2, 64))],
)
def test_rope_kv_write_matches_transformers(
    n: int, slots: int, positions: list[int], heads: tuple[int, int, int], dtype: torch.dtype
) -> None:
    num_heads, num_kv_heads, head_dim = heads
    qkv, pos, table, k_cache, v_cache = _rope_case(n, slots, positions, heads, dtype, seed=n)
    q = rope_kv_write(qkv, pos, table.cos, table.sin, k_cache, v_cache, num_heads, num_kv_heads, head_dim)

    q_in, k_in, v_in = qkv.split([num_heads * head_dim, num_kv_heads * head_dim, num_kv_heads * head_dim], -1)
    q_hf, k_hf = apply_rotary_pos_emb(
        q_in.reshape(n, num_heads, 1, head_dim),
        k_in.reshape(n, num_kv_heads, 1, head_dim),
        table.cos[pos].unsqueeze(1),  # [n, 1, Dh]
        table.sin[pos].unsqueeze(1),
    )
    assert q.shape == (n, num_heads, head_dim) and q.dtype == dtype
    torch.testing.assert_close(q, q_hf.squeeze(2).to(dtype))
    written = torch.zeros(k_cache.shape[:3], dtype=torch.bool)
    for i, p in enumerate(positions):
        written[i, :, p] = True
        torch.testing.assert_close(k_cache[i, :, p], k_hf[i, :, 0].to(dtype))
        assert torch.equal(v_cache[i, :, p], v_in[i].reshape(num_kv_heads, head_dim))
    for cache in (k_cache, v_cache):
        assert not cache[written].isnan().any()
        assert cache[~written].isnan().all()


def test_rope_kv_write_keeps_qkv() -> None:
    qkv, pos, table, k_cache, v_cache = _rope_case(2, 2, [1, 2], (2, 1, 64), torch.float32, seed=9)
    before = qkv.clone()
    rope_kv_write(qkv, pos, table.cos, table.sin, k_cache, v_cache, 2, 1, 64)
    assert torch.equal(qkv, before)


def test_bad_shapes_name_the_argument() -> None:
    x = torch.zeros(2, 8)
    with pytest.raises(ValueError, match="weight"):
        add_rms_norm(x, None, torch.zeros(7), 1e-5)
    with pytest.raises(ValueError, match="weight"):
        add_rms_norm(x, None, torch.zeros(8, dtype=torch.float16), 1e-5)
    with pytest.raises(ValueError, match="delta"):
        add_rms_norm(x, torch.zeros(2, 7), torch.zeros(8), 1e-5)
    with pytest.raises(ValueError, match="gate_up"):
        silu_mul(torch.zeros(2, 9), 4)
    qkv, pos, table, k_cache, v_cache = _rope_case(2, 2, [1, 2], (2, 1, 64), torch.float32, seed=0)
    args = (table.cos, table.sin, k_cache, v_cache, 2, 1, 64)
    with pytest.raises(ValueError, match="qkv"):
        rope_kv_write(qkv[:, :-1], pos, *args)
    with pytest.raises(ValueError, match="positions"):
        rope_kv_write(qkv, pos.int(), *args)
    with pytest.raises(ValueError, match="k_cache"):
        rope_kv_write(qkv, pos, table.cos, table.sin, k_cache[:1], v_cache, 2, 1, 64)
    with pytest.raises(ValueError, match="cos"):
        rope_kv_write(qkv, pos, table.cos[:, :32], table.sin, k_cache, v_cache, 2, 1, 64)


def test_position_past_the_table_is_refused_on_the_cpu() -> None:
    qkv, _, table, k_cache, v_cache = _rope_case(1, 1, [0], (2, 1, 64), torch.float32, seed=0)
    with pytest.raises(IndexError):
        rope_kv_write(qkv, torch.tensor([32]), table.cos, table.sin, k_cache, v_cache, 2, 1, 64)
