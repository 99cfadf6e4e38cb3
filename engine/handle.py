"""What a caller gets back: a streaming handle and the final result."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

FINISH_REASONS = ("stop", "length", "cancelled", "error")


@dataclass
class GenerationResult:
    request_id: int
    text: str
    token_ids: list[int]
    finish_reason: str
    error: str | None = None
    adapter: str | None = None
    num_prompt_tokens: int = 0
    time_to_first_token_s: float | None = None
    total_time_s: float = 0.0
    seed: int | None = None

    @property
    def num_completion_tokens(self) -> int:
        return len(self.token_ids)


_END = object()


@dataclass
class RequestHandle:
    """Iterate for text deltas (blocks until the request ends); cancel() at any time from any thread."""

    request_id: int
    adapter: str | None
    _wake: Callable[[], None]
    _deltas: queue.Queue = field(default_factory=queue.Queue)
    _done: threading.Event = field(default_factory=threading.Event)
    _result: GenerationResult | None = None
    _cancel_requested: bool = False

    def __iter__(self) -> Iterator[str]:
        while True:
            item = self._deltas.get()
            if item is _END:
                self._deltas.put(_END)
                return
            yield item

    def cancel(self) -> None:
        self._cancel_requested = True
        self._wake()

    @property
    def cancel_requested(self) -> bool:
        return self._cancel_requested

    @property
    def done(self) -> bool:
        return self._done.is_set()

    def result(self, timeout: float | None = None) -> GenerationResult:
        if not self._done.wait(timeout):
            raise TimeoutError(f"request {self.request_id} did not finish within {timeout} s")
        assert self._result is not None
        return self._result

    def push(self, delta: str) -> None:
        if delta:
            self._deltas.put(delta)

    def finish(self, result: GenerationResult) -> None:
        self._result = result
        self._deltas.put(_END)
        self._done.set()
