"""LoRA routing by runs of tokens (prefill of prompts with different adapters) against per-token routing."""

from __future__ import annotations

import pytest
import torch

from engine.lora.context import LoraRouting, set_routing
from engine.lora.projection import Projection
from engine.lora.stack import LoraStack
from engine.quant.linear import DenseLinear


def test_runs_merge_neighbours_on_one_slot_and_vanish_without_adapters():
    assert LoraRouting.of_runs([2, 2, -1, 2, 0], [3, 4, 5, 1, 2]).runs == ((2, 7), (-1, 5), (2, 1), (0, 2))
    assert LoraRouting.of_runs([-1, -1], [3, 4]) is None
    with pytest.raises(AssertionError, match="exactly one"):
        LoraRouting()


def test_runs_add_what_per_token_routing_adds():
    torch.manual_seed(0)
    parts = [(0, 6), (6, 4)]  # a fused projection of two parts, like q and k
    stack = LoraStack(3, 4, 8, parts, torch.device("cpu"), torch.float32)
    for slot, rank in ((0, 4), (1, 2)):  # slot 2 stays empty
        stack.write(slot, {g: (torch.randn(rank, 8), torch.randn(width, rank), 0.5 + g) for g, (_, width) in
                           enumerate(parts)})  # fmt: skip
    slots, lengths = [1, -1, 0, 0, 2, 1], [2, 3, 1, 2, 2, 3]
    x = torch.randn(sum(lengths), 8)
    by_token = torch.tensor([s for s, n in zip(slots, lengths, strict=True) for _ in range(n)], dtype=torch.int32)
    expected, got = torch.zeros(len(by_token), 10), torch.zeros(len(by_token), 10)
    stack.add_to(x, expected, LoraRouting(token_slots=by_token))
    stack.add_to(x, got, LoraRouting.of_runs(slots, lengths))
    assert expected.abs().sum() > 0 and (expected[2:5] == 0).all()  # rows without adapter get nothing
    torch.testing.assert_close(got, expected)


def test_a_projection_whose_adapters_were_all_cleared_launches_no_lora(monkeypatch):
    """A stack left behind by unloaded adapters adds nothing, so a forward must not run its (no-op) LoRA kernels."""
    proj = Projection(DenseLinear(torch.randn(6, 8)), {"q_proj": 6})
    stack = proj.ensure_lora(2, 4, torch.device("cpu"))
    stack.write(0, {0: (torch.randn(4, 8), torch.randn(6, 4), 1.0)})
    calls = []
    monkeypatch.setattr(LoraStack, "add_to", lambda self, x, y, routing: calls.append(routing))
    x = torch.randn(3, 8)
    set_routing(LoraRouting(token_slots=torch.tensor([0, -1, 0], dtype=torch.int32)))
    try:
        proj(x)
        assert len(calls) == 1
        stack.clear(0)
        torch.testing.assert_close(proj(x), x @ proj.base.weight.t())
        assert len(calls) == 1
    finally:
        set_routing(None)
