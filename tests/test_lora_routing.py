"""LoRA routing by runs of tokens (prefill of prompts with different adapters) against per-token routing."""

from __future__ import annotations

import pytest
import torch

from engine.lora.context import LoraRouting
from engine.lora.stack import LoraStack


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
