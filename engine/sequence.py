"""One request's state while the engine serves it."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from engine.config import SamplingParams
from engine.handle import FINISH_REASONS, GenerationResult, RequestHandle
from engine.sampling import RowSampler
from engine.tokenizer import IncrementalDetokenizer


@dataclass
class Sequence:
    request_id: int
    prompt_ids: list[int]
    sampling: SamplingParams
    adapter: str | None
    handle: RequestHandle
    detok: IncrementalDetokenizer
    sampler: RowSampler
    max_seq_len: int
    slot: int = -1
    lora_slot: int = -1
    output_ids: list[int] = field(default_factory=list)
    pending: int = 0  # tokens sampled by queued decode steps that the host has not read yet
    emitted: int = 0
    final_text: str | None = None
    finish_reason: str | None = None
    error: str | None = None
    t_submit: float = field(default_factory=time.perf_counter)
    t_first: float | None = None

    @property
    def position(self) -> int:
        """Position of the next token to feed (the last sampled one, maybe still on the device)."""
        return len(self.prompt_ids) + len(self.output_ids) + self.pending - 1

    @property
    def wants_token(self) -> bool:
        """Whether the next decode step samples for it: its tokens, read and pending, are short of its limits.
        A stop token or string among the pending ones ends it sooner; the token sampled after that is dropped."""
        made = len(self.output_ids) + self.pending
        return (
            self.finish_reason is None
            and made < self.sampling.max_tokens
            and len(self.prompt_ids) + made < self.max_seq_len
        )

    @property
    def holdback(self) -> int:
        return max((len(s) for s in self.sampling.stop), default=1) - 1

    def append(self, token: int, eos_ids: frozenset[int]) -> None:
        """Adds a sampled token, streams the text that can no longer be part of a stop string."""
        if self.t_first is None:
            self.t_first = time.perf_counter()
        self.output_ids.append(token)
        p = self.sampling
        if (token in eos_ids and not p.ignore_eos) or token in p.stop_token_ids:
            self.finish_reason = "stop"
            return
        self.detok.add(token)
        text = self.detok.text
        for stop in p.stop:
            at = text.find(stop, max(0, self.emitted - len(stop)))
            if at != -1:
                self.final_text, self.finish_reason = text[:at], "stop"
                return
        if len(self.output_ids) >= p.max_tokens or len(self.prompt_ids) + len(self.output_ids) >= self.max_seq_len:
            self.finish_reason = "length"
            return
        safe = len(text) - self.holdback
        if safe > self.emitted:
            self.handle.push(text[self.emitted : safe])
            self.emitted = safe

    def finish(self, reason: str | None = None, error: str | None = None) -> GenerationResult:
        self.finish_reason = reason or self.finish_reason or "stop"
        assert self.finish_reason in FINISH_REASONS, self.finish_reason
        self.error = error
        if self.final_text is None:
            self.detok.flush()
            self.final_text = self.detok.text
        if len(self.final_text) > self.emitted:
            self.handle.push(self.final_text[self.emitted :])
            self.emitted = len(self.final_text)
        now = time.perf_counter()
        result = GenerationResult(
            request_id=self.request_id,
            text=self.final_text,
            token_ids=list(self.output_ids),
            finish_reason=self.finish_reason,
            error=error,
            adapter=self.adapter,
            num_prompt_tokens=len(self.prompt_ids),
            time_to_first_token_s=None if self.t_first is None else self.t_first - self.t_submit,
            total_time_s=now - self.t_submit,
            seed=self.sampler.seed,
        )
        self.handle.finish(result)
        return result
