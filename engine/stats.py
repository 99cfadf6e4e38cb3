"""Engine counters and a short history of steps, for the UI, the API and tests."""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass, field

HISTORY = 2048


@dataclass(frozen=True)
class StepRecord:
    kind: str  # "prefill" | "decode"
    request_ids: tuple[int, ...]
    adapters: tuple[str | None, ...]


@dataclass(frozen=True)
class EngineStats:
    num_prefill_steps: int
    num_decode_steps: int
    num_generated_tokens: int
    num_finished: int
    num_running: int
    num_waiting: int
    max_batch_rows: int
    max_adapters_in_step: int
    tokens_per_s: float
    recent_steps: list[StepRecord] = field(default_factory=list)

    def shared_decode_steps(self, *request_ids: int) -> int:
        """How many recorded decode steps held all of the given requests at once."""
        wanted = set(request_ids)
        return sum(1 for s in self.recent_steps if s.kind == "decode" and wanted <= set(s.request_ids))


class StatsRecorder:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.steps: deque[StepRecord] = deque(maxlen=HISTORY)
        self.prefills = self.decodes = self.tokens = self.finished = 0
        self.max_rows = self.max_adapters = 0
        self._recent_tokens: deque[tuple[float, int]] = deque(maxlen=256)

    def record(self, kind: str, request_ids: list[int], adapters: list[str | None], new_tokens: int) -> None:
        with self._lock:
            self.steps.append(StepRecord(kind, tuple(request_ids), tuple(adapters)))
            if kind == "prefill":
                self.prefills += 1
            else:
                self.decodes += 1
                self.max_rows = max(self.max_rows, len(request_ids))
            self.max_adapters = max(self.max_adapters, len({a for a in adapters if a is not None}))
            self.tokens += new_tokens
            self._recent_tokens.append((time.perf_counter(), new_tokens))

    def record_finished(self) -> None:
        with self._lock:
            self.finished += 1

    def snapshot(self, running: int, waiting: int) -> EngineStats:
        with self._lock:
            now = time.perf_counter()
            window = [(t, n) for t, n in self._recent_tokens if now - t < 5.0]
            span = now - window[0][0] if len(window) > 1 else 0.0
            rate = sum(n for _, n in window[1:]) / span if span > 0 else 0.0
            return EngineStats(
                self.prefills,
                self.decodes,
                self.tokens,
                self.finished,
                running,
                waiting,
                self.max_rows,
                self.max_adapters,
                rate,
                list(self.steps),
            )
