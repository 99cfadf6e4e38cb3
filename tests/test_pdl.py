"""Programmatic dependent launch: which devices get it, and on a Hopper GPU a chain of dependent kernels
launched with it (eager and replayed from a CUDA graph) gives bit for bit what the same chain gives without it."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton", reason="PDL launches Triton kernels (CUDA-only path)")

from engine.kernels import nf4_matmul, pdl
from engine.kernels.fused_ops_triton import add_rms_norm_triton, silu_mul_triton

HAS_HOPPER = torch.cuda.is_available() and torch.cuda.get_device_capability() >= (9, 0)
DEVICE = torch.device("cuda:0")
D, INTER = 512, 1024


@pytest.fixture
def restore_pdl():
    default = pdl.pdl_mode()
    yield
    pdl.set_pdl(default)


def test_cpu_tensors_never_launch_with_pdl() -> None:
    assert not pdl.pdl_for(torch.device("cpu"))


def test_switched_off_pdl_holds_for_every_device(restore_pdl) -> None:
    pdl.set_pdl(pdl.OFF)
    assert pdl.pdl_for(torch.device("cuda", 0)) == pdl.OFF


def test_an_unknown_mode_is_refused() -> None:
    with pytest.raises(ValueError, match="PDL mode"):
        pdl.set_pdl(3)


def _chain(h, delta, norm_w, gate_up_w, down_w):
    h_new, y = add_rms_norm_triton(h, delta, norm_w, 1e-5)  # [T, D]
    gate_up = nf4_matmul(y, *gate_up_w, 2 * INTER, D)  # [T, 2I]
    act = silu_mul_triton(gate_up, INTER)  # [T, I]
    out = nf4_matmul(act, *down_w, D, INTER)  # [T, D]
    return add_rms_norm_triton(h_new, out, norm_w, 1e-5)[1]


@pytest.fixture
def weights():
    from bitsandbytes.functional import quantize_4bit

    gen = torch.Generator().manual_seed(0)

    def nf4(n: int, k: int) -> tuple[torch.Tensor, ...]:
        w = (torch.randn(n, k, generator=gen) / k**0.5).to(torch.float16)
        q, state = quantize_4bit(w, quant_type="nf4", blocksize=64, compress_statistics=False)
        return q.to(DEVICE), state.absmax.to(DEVICE), state.code.to(DEVICE)

    norm_w = torch.rand(D, generator=gen).to(DEVICE, torch.float16) + 0.5
    return norm_w, nf4(2 * INTER, D), nf4(D, INTER)


@pytest.mark.skipif(not HAS_HOPPER, reason="needs a CUDA GPU of compute capability 9.0 or newer, and Triton")
@pytest.mark.parametrize("mode", [1, 2])
@torch.inference_mode()
def test_a_chain_launched_with_pdl_matches_the_chain_without(weights, restore_pdl, mode: int) -> None:
    pdl.set_pdl(mode)
    assert pdl.pdl_for(DEVICE) == mode, "a Hopper GPU launches in the mode set"
    h = torch.randn(3, D, device=DEVICE, dtype=torch.float16)
    delta = torch.randn_like(h)
    pdl.set_pdl(pdl.OFF)
    expected = _chain(h, delta, *weights)
    pdl.set_pdl(mode)
    torch.testing.assert_close(_chain(h, delta, *weights), expected, rtol=0, atol=0)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = _chain(h, delta, *weights)
    for seed in range(20):
        torch.manual_seed(seed)
        h.copy_(torch.randn_like(h))
        delta.copy_(torch.randn_like(h))
        graph.replay()
        pdl.set_pdl(pdl.OFF)
        expected = _chain(h, delta, *weights)
        pdl.set_pdl(mode)
        torch.testing.assert_close(out, expected, rtol=0, atol=0)
