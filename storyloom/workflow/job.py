"""`Job`: a running story, re-run or compare request that can be waited on and cancelled."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from concurrent.futures import CancelledError, Future
from typing import Any, Protocol

from storyloom.workflow.draft import StoryDraft
from storyloom.workflow.events import StoryEvent

log = logging.getLogger(__name__)


class JobCancelled(Exception):
    """Raised inside a job's work when the job was cancelled; the job ends as "cancelled"."""


class Cancellable(Protocol):
    def cancel(self) -> None: ...


class Job:
    """Handle on one unit of work. Thread-safe.

    ``result()`` returns a ``StoryDraft`` for story jobs and ``list[CompareRow]`` for compare jobs; it raises
    ``concurrent.futures.CancelledError`` when the job was cancelled and the job's exception when it failed.
    Events go to ``on_event`` one at a time (never two at once), from worker or engine threads.
    """

    def __init__(self, on_event: Callable[[StoryEvent], None] | None = None, *, kind: str = "story") -> None:
        self.kind = kind
        self._on_event = on_event
        self._future: Future[Any] = Future()
        self._emit_lock = threading.Lock()
        self._finished = False
        self._state_lock = threading.Lock()
        self._cancel = threading.Event()
        self._children: list[Cancellable] = []
        self._partial: StoryDraft | None = None

    # --- public ---------------------------------------------------------------------------------------
    def cancel(self) -> None:
        """Ask the job to stop: running LLM requests and renders are cancelled; returns at once."""
        with self._state_lock:
            if self._future.done():
                return
            self._cancel.set()
            children = list(self._children)
        for child in children:
            child.cancel()

    @property
    def done(self) -> bool:
        return self._future.done()

    @property
    def cancelled(self) -> bool:
        """True when cancel() was called before the job finished."""
        return self._cancel.is_set()

    def result(self, timeout: float | None = None) -> Any:
        """Wait for the job; raises TimeoutError, CancelledError, or the job's own error."""
        return self._future.result(timeout)

    def add_done_callback(self, fn: Callable[[Job], None]) -> None:
        """Call ``fn(job)`` when the job ends (at once if it already has)."""
        self._future.add_done_callback(lambda _f: fn(self))

    # --- used by the work itself ----------------------------------------------------------------------
    def emit(self, event: StoryEvent) -> None:
        """Report ``event``; a failing callback is logged, never allowed to break the job. ``finished`` is always
        the last event: a late one (e.g. a stream reader still draining a cancelled row) is dropped."""
        if self._on_event is None:
            return
        with self._emit_lock:
            if self._finished:
                log.debug("dropped a %s event that came after the job finished", event.kind)
                return
            self._finished = event.kind == "finished"
            try:
                self._on_event(event)
            except Exception:
                log.exception("on_event callback failed for %s event", event.kind)

    def check_cancelled(self) -> None:
        if self._cancel.is_set():
            raise JobCancelled

    def track(self, child: Cancellable) -> None:
        """Cancel ``child`` (a request handle, a render future) when the job is cancelled."""
        with self._state_lock:
            self._children.append(child)
            cancelled = self._cancel.is_set()
        if cancelled:
            child.cancel()

    def keep_partial(self, draft: StoryDraft) -> None:
        """Remember the draft so far: a cancelled or failed job reports it in its ``finished`` event."""
        self._partial = draft

    def execute(self, work: Callable[[Job], Any]) -> None:
        """Run ``work(self)`` on the calling thread and settle the job; emits the final ``finished`` event."""
        try:
            self.check_cancelled()
            value = work(self)
        except (JobCancelled, CancelledError):
            self.emit(StoryEvent("finished", "run", text="cancelled", draft=self._partial))
            self._future.set_exception(CancelledError())
        except Exception as exc:
            log.debug("job failed", exc_info=True)
            self.emit(StoryEvent("error", "run", text=describe_error(exc)))
            self.emit(StoryEvent("finished", "run", text="failed", draft=self._partial))
            self._future.set_exception(exc)
        else:
            draft = value if isinstance(value, StoryDraft) else None
            story_id = draft.story_id if draft is not None else None
            self.emit(StoryEvent("finished", "run", text="completed", draft=draft, story_id=story_id))
            self._future.set_result(value)


def describe_error(exc: BaseException) -> str:
    """The error as one readable line (multi-line messages, such as AdapterError's list, are joined)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return "; ".join(lines) or type(exc).__name__
