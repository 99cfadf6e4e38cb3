"""Owns the model and its KV cache on the device: prefill, decode (CUDA graphs per shape bucket), sampling."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import torch

from engine.kv_cache import KVCache
from engine.lora.context import LoraRouting, set_routing
from engine.model import ForwardMeta, LlamaModel
from engine.sampling import sample
from engine.sequence import Sequence
from engine.transfer import PendingTokens, pinned, to_device

log = logging.getLogger(__name__)


def batch_bucket(n: int, max_rows: int) -> int:
    b = 1
    while b < n:
        b *= 2
    return min(b, max_rows)


@dataclass
class DecodeGraph:
    graph: torch.cuda.CUDAGraph
    positions: torch.Tensor  # [n]
    lora_slots: torch.Tensor  # [n] int32
    logits: torch.Tensor  # [n, V]


class ModelRunner:
    def __init__(
        self,
        model: LlamaModel,
        cache: KVCache,
        device: torch.device,
        use_graphs: bool,
        lora_version: Callable[[], int],
    ) -> None:
        self.model, self.cache, self.device = model, cache, device
        self.use_graphs = use_graphs and device.type == "cuda"
        self.kv_block = 256 if device.type == "cuda" else 64
        self.lora_version = lora_version
        self._graphs: dict[tuple, DecodeGraph] = {}
        self._pool: tuple[int, int] | None = None  # the graphs' shared memory pool; a fresh one once none is left
        # [slots] each slot's newest sampled token = its next decode input, written on the device by take_tokens,
        # so a decode step can be queued before the host has read the token of the step before
        self.last_tokens = torch.zeros(cache.num_slots, dtype=torch.long, device=device)

    @torch.inference_mode()
    def prefill(self, seqs: list[Sequence]) -> torch.Tensor:
        # prompts, each with its own adapter slot (or none), in one forward -> each prompt's last logits: [n, V]
        tokens = torch.tensor([t for s in seqs for t in s.prompt_ids], device=self.device)
        lengths = [len(s.prompt_ids) for s in seqs]
        meta = ForwardMeta.prefill([s.slot for s in seqs], lengths, self.device)
        set_routing(LoraRouting.of_runs([s.lora_slot for s in seqs], lengths))
        try:
            return self.model(tokens, meta, self.cache, last_only=True)
        finally:
            set_routing(None)

    def take_tokens(self, logits: torch.Tensor, seqs: list[Sequence], by_slot: bool) -> PendingTokens:
        # logits: [R, V], row i = seqs[i] (prefill) or row = each seq's slot (by_slot: decode) -> their sampled
        # tokens, on their way to the host; each also becomes its slot's next decode input
        slots = to_device([s.slot for s in seqs], torch.long, self.device)  # [n]
        tokens = sample(logits.index_select(0, slots) if by_slot else logits, [s.sampler for s in seqs])  # [n]
        self.last_tokens.index_copy_(0, slots, tokens)
        return PendingTokens.of(tokens)

    def _kv_len(self, max_position: int) -> int:
        blocks = (max_position + 1 + self.kv_block - 1) // self.kv_block
        return min(blocks * self.kv_block, self.cache.max_seq_len)

    @torch.inference_mode()
    def decode(self, rows: list[Sequence | None]) -> torch.Tensor:
        # rows[i] is the sequence in slot i (None = hole); -> logits [n, V] for those rows. Each row's input token
        # is its slot's in last_tokens; the host lists below never wait for the device.
        n = len(rows)
        positions = [s.position if s else 0 for s in rows]
        lora_slots = [s.lora_slot if s else -1 for s in rows]
        kv_len = self._kv_len(max(positions))
        use_lora = any(slot >= 0 for slot in lora_slots)
        if self.use_graphs:
            nb = batch_bucket(n, self.cache.num_slots)
            pad = nb - n
            inputs = (positions + [0] * pad, lora_slots + [-1] * pad)
            g = self._graph(nb, kv_len, use_lora, inputs)
            for buf, values in zip((g.positions, g.lora_slots), inputs, strict=True):
                buf.copy_(pinned(values, buf.dtype, self.device), non_blocking=True)
            g.graph.replay()
            return g.logits[:n]
        p = to_device(positions, torch.long, self.device)
        s = to_device(lora_slots, torch.int32, self.device)
        return self._decode_forward(self.last_tokens[:n], p, s if use_lora else None, kv_len)

    def _decode_forward(
        self, tokens: torch.Tensor, positions: torch.Tensor, lora_slots: torch.Tensor | None, kv_len: int
    ) -> torch.Tensor:
        set_routing(LoraRouting(token_slots=lora_slots) if lora_slots is not None else None)
        try:
            return self.model(tokens, ForwardMeta(positions=positions, kv_len=kv_len), self.cache, last_only=False)
        finally:
            set_routing(None)

    def release_graphs(self) -> None:
        """Drops every decode graph (they hold device addresses); the next decode steps capture again."""
        self._graphs.clear()

    def _graph(self, n: int, kv_len: int, use_lora: bool, inputs: tuple[list[int], ...]) -> DecodeGraph:
        """Captures on first use. The warm-up runs use this step's real inputs, so their cache writes are the
        ones the step makes anyway and no live slot is disturbed."""
        key = (n, kv_len, use_lora, self.lora_version() if use_lora else 0)
        if key in self._graphs:
            return self._graphs[key]
        if use_lora:
            stale = [k for k in self._graphs if k[2] and k[3] != key[3]]
            if stale:  # the step before may still run one of them; its memory must not go to another stream yet
                torch.cuda.current_stream(self.device).synchronize()
            for k in stale:
                del self._graphs[k]
        tokens = self.last_tokens[:n]
        positions, lora_slots = (
            to_device(v, dtype, self.device) for v, dtype in zip(inputs, (torch.long, torch.int32), strict=True)
        )
        slots = lora_slots if use_lora else None
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(2):
                self._decode_forward(tokens, positions, slots, kv_len)
        torch.cuda.current_stream().wait_stream(stream)
        if not self._graphs:  # a pool whose graphs are all gone cannot take a new capture (allocator assert)
            self._pool = torch.cuda.graph_pool_handle()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self._pool):
            logits = self._decode_forward(tokens, positions, slots, kv_len)
        log.debug("captured decode graph rows=%d kv_len=%d lora=%s", n, kv_len, use_lora)
        self._graphs[key] = DecodeGraph(graph, positions, lora_slots, logits)
        return self._graphs[key]
