"""Per-row sampling on the device: penalties, temperature, top-k, top-p, seeded draws."""

from __future__ import annotations

import random

import torch

from engine.config import SamplingParams
from engine.transfer import to_device


class RowSampler:
    """Sampling state of one request: its own generator, so its draws never depend on other rows."""

    def __init__(self, params: SamplingParams, prompt_ids: list[int], vocab_size: int, device: torch.device) -> None:
        self.params = params
        self.seed = params.seed if params.seed is not None else random.SystemRandom().randrange(2**63)
        self.generator = torch.Generator(device=device)
        self.generator.manual_seed(self.seed)
        self._prompt_ids = prompt_ids
        self._vocab_size = vocab_size
        self._device = device
        self._seen: torch.Tensor | None = None

    @property
    def seen(self) -> torch.Tensor | None:
        """[V] bool mask of tokens in the prompt and output, for the repetition penalty; made on the engine
        thread at first use, so it lives on the engine's stream."""
        if self.params.repetition_penalty == 1.0:
            return None
        if self._seen is None:
            self._seen = torch.zeros(self._vocab_size, dtype=torch.bool, device=self._device)
            self._seen[to_device(self._prompt_ids, torch.long, self._device)] = True
        return self._seen


def sample(logits: torch.Tensor, rows: list[RowSampler]) -> torch.Tensor:
    # logits: [B, V] fp32 -> token ids [B] int64, on the device; the host waits for nothing (engine/transfer.py)
    tokens = _draw(logits, rows)
    for i, row in enumerate(rows):
        seen = row.seen
        if seen is not None:
            seen.index_fill_(0, tokens[i : i + 1], True)  # on the device: the next step's penalty sees it
    return tokens


def _draw(logits: torch.Tensor, rows: list[RowSampler]) -> torch.Tensor:
    # logits: [B, V] fp32 -> token ids [B] int64
    device = logits.device
    for i, row in enumerate(rows):
        seen = row.seen
        if seen is not None:
            p = row.params.repetition_penalty
            li = logits[i]
            logits[i] = torch.where(seen, torch.where(li > 0, li / p, li * p), li)
    greedy = logits.argmax(dim=-1)
    if all(r.params.is_greedy for r in rows):
        return greedy
    temps = to_device([max(r.params.temperature, 1e-5) for r in rows], torch.float32, device)
    probs = torch.softmax(logits / temps[:, None], dim=-1)
    sorted_p, order = probs.sort(dim=-1, descending=True)  # [B, V]
    rank = torch.arange(probs.shape[-1], device=device)[None]  # [1, V]
    top_k = to_device([r.params.top_k or probs.shape[-1] for r in rows], torch.long, device)
    top_p = to_device([r.params.top_p for r in rows], torch.float32, device)
    before = sorted_p.cumsum(dim=-1) - sorted_p  # mass strictly above each candidate
    keep = (rank < top_k[:, None]) & ((before < top_p[:, None]) | (rank == 0))
    kept = sorted_p * keep
    cdf = kept.cumsum(dim=-1)  # [B, V]
    u = torch.cat([torch.rand(1, generator=r.generator, device=device) for r in rows])  # [B]
    pick = torch.searchsorted(cdf, (u * cdf[:, -1])[:, None]).clamp(max=probs.shape[-1] - 1)  # [B, 1]
    drawn = order.gather(1, pick).squeeze(1)
    is_greedy = to_device([r.params.is_greedy for r in rows], torch.bool, device)
    return torch.where(is_greedy, greedy, drawn)
