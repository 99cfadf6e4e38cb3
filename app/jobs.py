"""Background work for the GUI (after Anki's taskman): blocking calls run on a worker thread and their
result or error comes back to the GUI thread through a queued signal. Views never do work themselves."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from PySide6.QtCore import QCoreApplication, QEvent, QObject, Signal, Slot

log = logging.getLogger(__name__)

OnDone = Callable[[Any], None]
OnError = Callable[[BaseException], None]


class JobRunner(QObject):
    """Runs callables off the GUI thread; `on_done(result)` / `on_error(exc)` run on the GUI thread."""

    _finished = Signal(object, object, object)  # (future, on_done, on_error)

    def __init__(self, parent: QObject | None = None, num_workers: int = 2) -> None:
        super().__init__(parent)
        self._pool = ThreadPoolExecutor(max_workers=num_workers, thread_name_prefix="storyloom-gui-job")
        self._num_running = 0
        self._closed = False
        self._finished.connect(self._deliver)

    @property
    def is_busy(self) -> bool:
        return self._num_running > 0

    def run(self, fn: Callable[[], Any], on_done: OnDone | None = None, on_error: OnError | None = None) -> Future:
        if self._closed:
            raise RuntimeError("JobRunner is closed")
        self._num_running += 1
        future = self._pool.submit(fn)
        future.add_done_callback(lambda f: self._emit_finished(f, on_done, on_error))
        return future

    def close(self, wait: bool = True) -> None:
        """Stop accepting jobs; with `wait`, block until the running ones end (their results are dropped)."""
        self._closed = True
        self._pool.shutdown(wait=wait, cancel_futures=True)

    def _emit_finished(self, future: Future, on_done: OnDone | None, on_error: OnError | None) -> None:
        if self._closed:
            return
        with contextlib.suppress(RuntimeError):  # the QObject was deleted while the job ran (window closed)
            self._finished.emit(future, on_done, on_error)

    @Slot(object, object, object)
    def _deliver(self, future: Future, on_done: OnDone | None, on_error: OnError | None) -> None:
        self._num_running -= 1
        if future.cancelled():
            return
        exc = future.exception()
        if exc is not None:
            log.debug("background job failed: %s", exc, exc_info=exc)
            if on_error is not None:
                on_error(exc)
            else:
                log.error("background job failed: %s", exc)
            return
        if on_done is not None:
            on_done(future.result())


class ProgressRelay(QObject):
    """A progress callback for a job on a worker thread: `report(value)` there, `on_progress(value)` runs on
    the thread that owns the relay (the GUI thread), in report order and before the job's `JobRunner` result.

    Posts events instead of emitting a signal: with PySide6 6.12 on Python 3.11, `Signal.emit` drops a
    reference to `True` on every call (a few hundred emits before torch is loaded end the process with
    "bool_dealloc"), and a download reports thousands of times. Reports still queued when the relay is
    deleted are dropped.
    """

    def __init__(self, on_progress: Callable[[Any], None], parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._on_progress = on_progress

    def report(self, value: Any) -> None:
        """Called on the worker thread: post, nothing else."""
        with contextlib.suppress(RuntimeError):  # the view was deleted while the job ran
            QCoreApplication.postEvent(self, _ValueEvent(value))

    def customEvent(self, event: QEvent) -> None:
        if isinstance(event, _ValueEvent):
            self._on_progress(event.value)


class _ValueEvent(QEvent):
    TYPE = QEvent.Type(QEvent.registerEventType())

    def __init__(self, value: Any) -> None:
        super().__init__(self.TYPE)
        self.value = value
