"""Split-KV decode attention (Triton) against the torch reference. Needs CUDA, or the Triton interpreter on
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

from engine.kernels.decode_attention import decode_attention, decode_attention_reference  # noqa: E402
from engine.kernels.decode_attention_triton import BLOCK_N, decode_attention_triton, split_plan  # noqa: E402
from engine.kernels.lora_reference import lora_shrink_reference  # noqa: E402
from engine.kernels.lora_types import LoraShrink  # noqa: E402
from engine.kernels.nf4_triton import _num_sms  # noqa: E402

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
_num_sms.setdefault(torch.device("cpu"), 4)
KV_LEN = 3 * BLOCK_N  # not a power of two: the default plan's last split is short on the interpreter's 4 "SMs"
P = 4 * BLOCK_N
TOL = {torch.float16: 3e-3, torch.float32: 2e-5}


def _inputs(n: int, num_heads: int, num_kv_heads: int, head_dim: int, dtype: torch.dtype, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    q = 2 * torch.randn(n, num_heads, head_dim, generator=g)  # a peaked softmax: errors in the max show
    k_cache = torch.randn(n + 1, num_kv_heads, P, head_dim, generator=g)
    v_cache = torch.randn(n + 1, num_kv_heads, P, head_dim, generator=g)
    return tuple(t.to(DEVICE, dtype) for t in (q, k_cache, v_cache))


def _lengths(n: int, case: str) -> torch.Tensor:
    values = {"short": [1, 1, 1], "full": [KV_LEN] * 3, "mixed": [BLOCK_N + 7, 1, KV_LEN]}[case]
    return torch.tensor(values[:n], device=DEVICE)


def _check(out: torch.Tensor, expected: torch.Tensor) -> None:
    assert out.dtype == expected.dtype and out.shape == expected.shape
    tol = TOL[expected.dtype]
    torch.testing.assert_close(out.float(), expected.float(), atol=tol, rtol=tol)


@pytest.mark.parametrize("n", [1, 3])
@pytest.mark.parametrize("case", ["short", "mixed", "full"])
@pytest.mark.parametrize("num_heads, num_kv_heads", [(4, 1), (8, 2), (4, 4)])
@pytest.mark.parametrize("head_dim", [64, 128])
@pytest.mark.parametrize("dtype", [torch.float16, torch.float32], ids=str)
def test_matches_reference(n, case, num_heads, num_kv_heads, head_dim, dtype) -> None:
    q, k_cache, v_cache = _inputs(n, num_heads, num_kv_heads, head_dim, dtype)
    lengths = _lengths(n, case)
    out = decode_attention_triton(q, k_cache, v_cache, lengths, KV_LEN, head_dim**-0.5)[0]
    _check(out, decode_attention_reference(q, k_cache, v_cache, lengths, KV_LEN))


@pytest.mark.parametrize("max_splits, expected", [(1, (1, 3)), (2, (2, 2)), (3, (3, 1)), (8, (3, 1))])
def test_split_counts(max_splits, expected) -> None:
    """One split (the single-kernel path), uneven splits and more splits asked for than tiles exist."""
    assert split_plan(3, 2, KV_LEN, DEVICE, max_splits) == expected
    q, k_cache, v_cache = _inputs(3, 8, 2, 64, torch.float16, seed=1)
    lengths = _lengths(3, "mixed")
    out = decode_attention_triton(q, k_cache, v_cache, lengths, KV_LEN, 0.125, max_splits=max_splits)[0]
    _check(out, decode_attention_reference(q, k_cache, v_cache, lengths, KV_LEN))


def test_kv_len_off_the_tile_grid_and_custom_scale() -> None:
    q, k_cache, v_cache = _inputs(3, 8, 2, 128, torch.float32, seed=2)
    lengths = torch.tensor([50, 100, 1], device=DEVICE, dtype=torch.int32)
    out = decode_attention_triton(q, k_cache, v_cache, lengths, 100, 0.05, max_splits=2)[0]
    _check(out, decode_attention_reference(q, k_cache, v_cache, lengths, 100, 0.05))


def test_strided_q() -> None:
    """q as a view of a wider qkv row (what the projection output gives)."""
    qkv = torch.randn(3, 12 * 64, device=DEVICE, dtype=torch.float16)
    q = qkv[:, : 8 * 64].view(3, 8, 64)
    _, k_cache, v_cache = _inputs(3, 8, 2, 64, torch.float16, seed=3)
    lengths = _lengths(3, "mixed")
    out = decode_attention_triton(q, k_cache, v_cache, lengths, KV_LEN, 0.125)[0]
    _check(out, decode_attention_reference(q, k_cache, v_cache, lengths, KV_LEN))


@pytest.mark.parametrize("max_splits", [1, None])
@pytest.mark.parametrize("poison", [float("nan"), float("inf"), 6e4])
def test_positions_past_the_length_never_count(max_splits, poison) -> None:
    n, head_dim = 3, 64
    q, k_cache, v_cache = _inputs(n, 8, 2, head_dim, torch.float16, seed=4)
    lengths = _lengths(n, "mixed")
    clean = decode_attention_reference(q, k_cache, v_cache, lengths, KV_LEN)
    past = torch.arange(P, device=DEVICE)[None] >= lengths[:, None]  # [n, P]
    for cache in (k_cache, v_cache):
        cache[:n].masked_fill_(past[:, None, :, None], poison)
        cache[n:] = poison  # slots past the batch
    out = decode_attention_triton(q, k_cache, v_cache, lengths, KV_LEN, head_dim**-0.5, max_splits=max_splits)[0]
    assert torch.isfinite(out).all()
    _check(out, clean)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs and the public CUDA dispatch need a GPU")
def test_public_function_replays_in_a_cuda_graph() -> None:
    n, kv_len = 3, 256
    q, k_cache, v_cache = _inputs(n, 32, 8, 128, torch.float16, seed=5)
    lengths = torch.tensor([1, 1, 1], device=DEVICE)
    decode_attention(q, k_cache, v_cache, lengths, kv_len)  # warm-up compiles outside the capture
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = decode_attention(q, k_cache, v_cache, lengths, kv_len)[0]
    for values in ([1, 1, 1], [200, 17, 256], [256, 256, 3]):
        lengths.copy_(torch.tensor(values))
        q.normal_()
        graph.replay()
        _check(out, decode_attention_reference(q, k_cache, v_cache, lengths, kv_len))


@pytest.mark.parametrize("max_splits", [1, 2, None])
@pytest.mark.parametrize("rank_bound", [16, 0])
@pytest.mark.parametrize("num_heads, num_kv_heads", [(8, 2), (32, 8)])
def test_fused_o_shrink_matches_the_reference(max_splits, rank_bound, num_heads, num_kv_heads) -> None:
    """o's LoRA shrink of the output, one partial sum per head (the combine runs for a single split too): rows on
    ranks 16 and 5 of a rank-32 stack, a row without an adapter; the padding past each rank holds garbage."""
    n, head_dim = 3, 64
    q, k_cache, v_cache = _inputs(n, num_heads, num_kv_heads, head_dim, torch.float16, seed=6)
    lengths = _lengths(n, "mixed")
    a_stack = torch.randn(3, 32, num_heads * head_dim, device=DEVICE, dtype=torch.float16)
    ranks = torch.tensor([16, 5, 0], device=DEVICE, dtype=torch.int32)
    slots = torch.tensor([1, -1, 0], device=DEVICE, dtype=torch.int32)
    shrink = LoraShrink(slots, a_stack, ranks, 1, rank_bound)
    out, t = decode_attention_triton(q, k_cache, v_cache, lengths, KV_LEN, 0.125, max_splits, shrink)
    _check(out, decode_attention_reference(q, k_cache, v_cache, lengths, KV_LEN, 0.125))
    assert t.shape == (n, num_heads, 32)
    read = rank_bound or 32  # the entries every reader takes (up to the largest resident rank)
    expected = lora_shrink_reference(out.reshape(n, -1), slots, a_stack, ranks)[:, 0, :read]
    torch.testing.assert_close(t.sum(1)[:, :read], expected, atol=1e-2, rtol=1e-3)
