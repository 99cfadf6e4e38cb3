"""On CUDA the LoRA shrink runs on a side stream beside the base matmul; same result as the reference, also when
replayed from a CUDA graph. Needs a GPU with Triton."""

from __future__ import annotations

import importlib.util

import pytest
import torch
from torch import nn

from engine.kernels import lora_reference
from engine.lora.context import LoraRouting
from engine.lora.stack import LoraStack

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available() or importlib.util.find_spec("triton") is None, reason="needs a CUDA GPU and Triton"
)
DEVICE = torch.device("cuda:0")
K = 256
PARTS = [(0, 256), (256, 128), (384, 128)]  # a fused q/k/v; segment starts on the expand kernel's 128 columns


@pytest.fixture
def stack_and_base():
    torch.manual_seed(0)
    stack = LoraStack(4, 16, K, PARTS, DEVICE, torch.float16, use_kernels=True)
    for slot, rank in ((0, 16), (1, 8), (2, 4)):  # slot 3 stays empty
        stack.write(slot, {g: (torch.randn(rank, K) / 8, torch.randn(width, rank) / 8, 0.5) for g, (_, width) in
                           enumerate(PARTS)})  # fmt: skip
    base = nn.Linear(K, 512, bias=False, device=DEVICE, dtype=torch.float16)
    return stack, base


def _expected(stack: LoraStack, base: nn.Module, x: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
    segments = tuple(start for start, _ in PARTS[1:])
    return lora_reference(x, slots, stack.a, stack.b, stack.scales, stack.ranks, base(x).clone(), segments)


@pytest.mark.parametrize("beside", [True, False], ids=["beside", "in_turn"])
@torch.inference_mode()
def test_shrink_beside_the_base_matmul_adds_each_rows_adapter(stack_and_base, monkeypatch, beside: bool):
    stack, base = stack_and_base
    monkeypatch.setattr(LoraStack, "shrink_beside", beside)
    x = torch.randn(5, K, device=DEVICE, dtype=torch.float16)
    slots = torch.tensor([0, -1, 2, 1, 3], device=DEVICE, dtype=torch.int32)
    got = stack.project(x, base, LoraRouting(token_slots=slots))
    expected = _expected(stack, base, x, slots)
    assert (expected - base(x)).abs().amax() > 0.1, "the adapters must change the output"
    torch.testing.assert_close(got, expected, rtol=2e-2, atol=2e-2)


@torch.inference_mode()
def test_the_fork_and_join_replay_from_a_cuda_graph(stack_and_base):
    stack, base = stack_and_base
    x = torch.randn(4, K, device=DEVICE, dtype=torch.float16)
    slots = torch.tensor([2, 0, -1, 1], device=DEVICE, dtype=torch.int32)
    routing = LoraRouting(token_slots=slots)
    warmup = torch.cuda.Stream()
    warmup.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(warmup):
        stack.project(x, base, routing)
    torch.cuda.current_stream().wait_stream(warmup)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = stack.project(x, base, routing)
    for _ in range(3):
        x.copy_(torch.randn_like(x))
        graph.replay()
        torch.testing.assert_close(out, _expected(stack, base, x, slots), rtol=2e-2, atol=2e-2)
