"""Bridges from the Studio's threads to the GUI thread.

Studio callbacks run on worker or engine threads: they only convert data (PIL -> QImage, which is safe off
the GUI thread) and emit a signal; Qt queues the signal to the GUI thread, where the views update.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent.futures import CancelledError, Future
from typing import TYPE_CHECKING, Any

from PySide6.QtCore import QObject, Qt, Signal
from PySide6.QtGui import QImage

if TYPE_CHECKING:
    from PIL.Image import Image

    from storyloom.studio import Job, StoryEvent, Studio, StudioStatus

log = logging.getLogger(__name__)


def pil_to_qimage(image: Image) -> QImage:
    """A deep copy of a PIL image as a QImage (thread-safe: QImage is not a GUI-thread object)."""
    rgba = image.convert("RGBA")
    data = rgba.tobytes("raw", "RGBA")
    # data: [H, W, 4] bytes; QImage wraps without copying, so copy before `data` goes away.
    return QImage(data, rgba.width, rgba.height, rgba.width * 4, QImage.Format.Format_RGBA8888).copy()


class JobRelay(QObject):
    """Re-emits one Studio job's events on the GUI thread.

    `event(StoryEvent, QImage | None)`: the event and its image converted for Qt (None without image).
    `finished(outcome, value)`: outcome is "completed" (value = the job's result), "cancelled" (value None)
    or "failed" (value = the exception); always the last signal.
    """

    event = Signal(object, object)
    finished = Signal(str, object)

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.job: Job | None = None

    def on_event(self, event: StoryEvent) -> None:
        """Called on a Studio thread: convert and re-emit, nothing else."""
        image = pil_to_qimage(event.image) if event.image is not None else None
        _emit_safely(self.event, event, image)

    def attach(self, job: Job) -> Job:
        self.job = job
        job.add_done_callback(self._on_done)
        return job

    def cancel(self) -> None:
        if self.job is not None:
            self.job.cancel()

    @property
    def is_running(self) -> bool:
        return self.job is not None and not self.job.done

    def _on_done(self, job: Job) -> None:
        try:
            value = job.result(timeout=0)
        except CancelledError:
            _emit_safely(self.finished, "cancelled", None)
        except Exception as exc:
            _emit_safely(self.finished, "failed", exc)
        else:
            _emit_safely(self.finished, "completed", value)


class StudioClient(QObject):
    """The GUI's handle on the Studio: starts it, starts jobs with relays, polls its status.

    `ready(StudioStatus)` / `load_failed(Exception)` report the model loading started by `start()`.
    """

    ready = Signal(object)
    load_failed = Signal(object)

    def __init__(self, studio: Studio, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.studio = studio
        self._relays: set[JobRelay] = set()

    def start(self) -> None:
        future = self.studio.start()
        future.add_done_callback(self._on_started)

    def run_job(
        self,
        start: Callable[[Callable[[StoryEvent], None]], Job],
        on_event: Callable[[StoryEvent, QImage | None], None],
        on_finished: Callable[[str, Any], None],
    ) -> JobRelay:
        """Start a job: `start(on_event) -> Job` is one of the Studio's job methods with its arguments bound.

        The slots are connected (queued) before the job starts, so no event is missed and none arrives
        before this returns. Raises what the Studio raises
        up front (InvalidRequestError, NotReadyError); the relay lives until its job finishes.
        """
        relay = JobRelay(self)
        queued = Qt.ConnectionType.QueuedConnection  # never delivered inside this call, even if done at once
        relay.event.connect(on_event, queued)
        relay.finished.connect(on_finished, queued)
        relay.finished.connect(lambda *_: self._forget(relay), queued)
        self._relays.add(relay)
        try:
            relay.attach(start(relay.on_event))
        except Exception:
            self._forget(relay)
            raise
        return relay

    def cancel_all(self) -> None:
        for relay in list(self._relays):
            relay.cancel()

    @property
    def is_busy(self) -> bool:
        return any(relay.is_running for relay in self._relays)

    def status(self) -> StudioStatus:
        return self.studio.status()

    def close(self) -> None:
        """Cancel running jobs and close the Studio (waits until nothing is half-written)."""
        self.cancel_all()
        self.studio.close()

    def _forget(self, relay: JobRelay) -> None:
        self._relays.discard(relay)
        relay.deleteLater()

    def _on_started(self, future: Future[Any]) -> None:
        try:
            status = future.result()
        except Exception as exc:
            log.error("loading the models failed: %s", exc)
            _emit_safely(self.load_failed, exc)
        else:
            _emit_safely(self.ready, status)


def _emit_safely(signal: Any, *args: Any) -> None:
    try:
        signal.emit(*args)
    except RuntimeError:  # the receiver's C++ object is gone (window closed while a job ended)
        log.debug("dropped a signal after the window closed")
