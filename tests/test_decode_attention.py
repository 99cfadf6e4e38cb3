"""Decode attention on the CPU (the torch reference behind `decode_attention`) against an explicit masked
softmax(q k^T * scale) v in float64, and its argument checks."""

from __future__ import annotations

import pytest
import torch

from engine.kernels.decode_attention import decode_attention
from engine.kernels.lora_types import LoraShrink

P = 48  # cache positions per slot


def _inputs(n: int, num_heads: int, num_kv_heads: int, head_dim: int, dtype: torch.dtype, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    q = (2 * torch.randn(n, num_heads, head_dim, generator=g)).to(dtype)
    k_cache = torch.randn(n + 1, num_kv_heads, P, head_dim, generator=g).to(dtype)
    v_cache = torch.randn(n + 1, num_kv_heads, P, head_dim, generator=g).to(dtype)
    return q, k_cache, v_cache


def _explicit(
    q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, lengths: list[int], scale: float
) -> torch.Tensor:
    # q: [n, H, Dh]; caches: [S, Hkv, P, Dh] -> [n, H, Dh] float64, row by row
    group = q.shape[1] // k_cache.shape[1]
    rows = []
    for i, length in enumerate(lengths):
        k = k_cache[i, :, :length].double().repeat_interleave(group, dim=0)  # [H, L, Dh]
        v = v_cache[i, :, :length].double().repeat_interleave(group, dim=0)
        scores = torch.einsum("hd,hld->hl", q[i].double(), k) * scale  # [H, L]
        weights = torch.exp(scores - scores.max(-1, keepdim=True).values)
        rows.append(torch.einsum("hl,hld->hd", weights / weights.sum(-1, keepdim=True), v))
    return torch.stack(rows)


@pytest.mark.parametrize("n, lengths", [(1, [1]), (1, [40]), (3, [1, 17, 40])])
@pytest.mark.parametrize("num_heads, num_kv_heads", [(4, 1), (8, 2), (4, 4)])
@pytest.mark.parametrize("head_dim", [64, 128])
@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-5), (torch.float16, 4e-3)])
def test_matches_explicit_softmax(n, lengths, num_heads, num_kv_heads, head_dim, dtype, tol) -> None:
    q, k_cache, v_cache = _inputs(n, num_heads, num_kv_heads, head_dim, dtype)
    out, t = decode_attention(q, k_cache, v_cache, torch.tensor(lengths), kv_len=40)
    assert t is None
    assert out.shape == q.shape and out.dtype == dtype
    torch.testing.assert_close(
        out.double(), _explicit(q, k_cache, v_cache, lengths, head_dim**-0.5), atol=tol, rtol=tol
    )


def test_custom_scale_and_int32_lengths() -> None:
    q, k_cache, v_cache = _inputs(2, 8, 2, 64, torch.float32, seed=1)
    out, _ = decode_attention(q, k_cache, v_cache, torch.tensor([5, 30], dtype=torch.int32), kv_len=32, scale=0.3)
    torch.testing.assert_close(out.double(), _explicit(q, k_cache, v_cache, [5, 30], 0.3), atol=1e-5, rtol=1e-5)


def test_positions_past_kv_len_are_not_read() -> None:
    q, k_cache, v_cache = _inputs(2, 4, 2, 64, torch.float32, seed=2)
    k_cache[:, :, 32:], v_cache[:, :, 32:] = float("nan"), float("nan")
    out, _ = decode_attention(q, k_cache, v_cache, torch.tensor([32, 9]), kv_len=32)
    torch.testing.assert_close(out.double(), _explicit(q, k_cache, v_cache, [32, 9], 64**-0.5), atol=1e-5, rtol=1e-5)


def _shrink(in_features: int) -> LoraShrink:
    """Row 0 on slot 1 (rank 4 of a rank-8 stack), row 1 without an adapter."""
    return LoraShrink(torch.tensor([1, -1], dtype=torch.int32), torch.randn(2, 8, in_features), torch.tensor([8, 4],
                      dtype=torch.int32))  # fmt: skip


def test_shrink_of_the_output() -> None:
    """o's LoRA shrink of the output viewed as [n, H * Dh]."""
    q, k_cache, v_cache = _inputs(2, 8, 2, 64, torch.float32, seed=3)
    shrink = _shrink(512)
    out, t = decode_attention(q, k_cache, v_cache, torch.tensor([5, 30]), kv_len=32, shrink=shrink)
    expected = out[0].reshape(-1) @ shrink.a_stack[1, :4].t()  # [4]
    torch.testing.assert_close(t[:, 0], torch.stack([torch.cat([expected, torch.zeros(4)]), torch.zeros(8)]))


def test_empty_batch() -> None:
    q, k_cache, v_cache = _inputs(0, 4, 2, 64, torch.float16)
    out, _ = decode_attention(q, k_cache, v_cache, torch.zeros(0, dtype=torch.int64), kv_len=16)
    assert out.shape == (0, 4, 64)


@pytest.mark.parametrize(
    "change, match",
    [
        (lambda q, k, v, lens: (q[0], k, v, lens, 16), "q: expected"),
        (lambda q, k, v, lens: (q, k.repeat(1, 2, 1, 1)[:, :3], v, lens, 16), "k_cache: expected"),
        (lambda q, k, v, lens: (q, k[:1], v[:1], lens, 16), "k_cache: expected"),
        (lambda q, k, v, lens: (q, k, v.half(), lens, 16), "v_cache: expected"),
        (lambda q, k, v, lens: (q, k, v[..., :32], lens, 16), "v_cache: expected"),
        (lambda q, k, v, lens: (q, k, v, lens.float(), 16), "lengths: expected"),
        (lambda q, k, v, lens: (q, k, v, lens[:1], 16), "lengths: expected"),
        (lambda q, k, v, lens: (q, k, v, lens, P + 1), "kv_len: expected"),
        (lambda q, k, v, lens: (q, k, v, lens, 0), "kv_len: expected"),
        (lambda q, k, v, lens: (q, k, v, lens, 16, None, _shrink(k.shape[-1] * 4)), "shrink: expected"),
    ],
)
def test_bad_arguments_are_named(change, match) -> None:
    q, k_cache, v_cache = _inputs(2, 8, 2, 64, torch.float32)
    with pytest.raises(ValueError, match=match):
        decode_attention(*change(q, k_cache, v_cache, torch.tensor([3, 4])))
