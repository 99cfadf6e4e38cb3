"""Compare: one prompt through several adapters (and the base model) in ONE engine batch."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

from storyloom.workflow.events import BASE_MODEL, StoryEvent
from storyloom.workflow.job import Job


@dataclass(frozen=True)
class CompareRow:
    """One row of a compare run: what ``adapter`` (None = base model) wrote, and how fast."""

    adapter: str | None
    text: str
    finish_reason: str
    num_completion_tokens: int
    total_time_s: float
    tokens_per_s: float
    error: str | None = None

    @property
    def label(self) -> str:
        return self.adapter or BASE_MODEL


def run_compare(engine: Any, prompt: str, adapters: list[str | None], sampling: Any, job: Job) -> list[CompareRow]:
    """Submit ``prompt`` once per adapter as one batch, stream every row, return the rows in order.

    ``engine`` follows the engine contract (``submit_batch``); ``sampling`` is a SamplingParams.
    Text deltas are reported as ``text_delta`` events on step "run" with ``row`` set and ``source`` the label.
    """
    if not prompt.strip():
        raise ValueError("prompt: must not be empty")
    if not adapters:
        raise ValueError("adapters: choose at least one adapter (None stands for the base model)")
    messages = [{"role": "user", "content": prompt}]
    handles = engine.submit_batch([messages] * len(adapters), sampling, list(adapters))
    for handle in handles:
        job.track(handle)
    readers = [
        threading.Thread(target=_stream_row, args=(job, handle, row, adapters[row]), daemon=True)
        for row, handle in enumerate(handles)
    ]
    for reader in readers:
        reader.start()
    for reader in readers:
        reader.join()
    job.check_cancelled()
    rows = []
    for adapter, handle in zip(adapters, handles, strict=True):
        res = handle.result()
        seconds = float(res.total_time_s or 0.0)
        rate = res.num_completion_tokens / seconds if seconds > 0 else 0.0
        rows.append(
            CompareRow(adapter, res.text, res.finish_reason, res.num_completion_tokens, seconds, rate, res.error)
        )
    return rows


def _stream_row(job: Job, handle: Any, row: int, adapter: str | None) -> None:
    label = adapter or BASE_MODEL
    job.emit(StoryEvent("step_started", "run", source=label, row=row))
    for delta in handle:
        job.emit(StoryEvent("text_delta", "run", text=delta, source=label, row=row))
    job.emit(StoryEvent("step_finished", "run", text=handle.result().text, source=label, row=row))
