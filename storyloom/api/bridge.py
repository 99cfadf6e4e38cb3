"""From engine request handles (blocking iterators on other threads) to async events on the server's loop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request

from storyloom.api.errors import ApiError, queue_full

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Delta:
    """New text of choice ``index``."""

    index: int
    text: str


@dataclass(frozen=True)
class Finished:
    """Choice ``index`` ended: ``result`` is its GenerationResult, or ``error`` says why there is none."""

    index: int
    result: Any | None
    error: str | None = None


class Admission:
    """Bounds the engine requests the API has in flight; a request beyond the bound gets 429.

    Used from the event loop only, so it needs no lock.
    """

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"max_queue: must be >= 1, got {capacity}")
        self.capacity = capacity
        self.num_active = 0

    def acquire(self, num: int) -> None:
        if num > self.capacity:
            raise ApiError(400, f"n: at most {self.capacity} choices per request, got {num}", param="n")
        if self.num_active + num > self.capacity:
            raise queue_full(f"too many queued requests ({self.num_active} of {self.capacity}); retry shortly")
        self.num_active += num

    def release(self, num: int) -> None:
        assert self.num_active >= num, (self.num_active, num)
        self.num_active -= num


class RequestStream:
    """The deltas and results of a group of engine requests, in arrival order.

    One pump thread per handle iterates it (iteration blocks) and posts events to this loop. ``close()``
    cancels whatever is still running and calls ``on_close`` once; it is safe to call more than once.
    """

    def __init__(self, handles: Sequence[Any], on_close: Callable[[], None]) -> None:
        self._loop = asyncio.get_running_loop()
        self._queue: asyncio.Queue[Delta | Finished] = asyncio.Queue()
        self._handles = list(handles)
        self._num_running = len(self._handles)
        self._on_close = on_close
        self._closed = False
        for index, handle in enumerate(self._handles):
            threading.Thread(target=self._pump, args=(index, handle), name=f"api-pump-{index}", daemon=True).start()

    def _pump(self, index: int, handle: Any) -> None:
        try:
            for text in handle:
                self._post(Delta(index, text))
            event = Finished(index, handle.result())
        except Exception as exc:
            log.exception("engine request %d failed", index)
            event = Finished(index, None, error=f"{type(exc).__name__}: {exc}")
        self._post(event)

    def _post(self, event: Delta | Finished) -> None:
        try:
            self._loop.call_soon_threadsafe(self._queue.put_nowait, event)
        except RuntimeError:  # the server's loop is gone (shutdown); nobody is listening any more
            log.debug("dropped %s: the event loop is closed", type(event).__name__)

    async def events(self) -> AsyncIterator[Delta | Finished]:
        """Every event until all requests have finished."""
        while self._num_running:
            event = await self._queue.get()
            if isinstance(event, Finished):
                self._num_running -= 1
            yield event
        self.close()

    async def results(self) -> list[Finished]:
        """Wait for every request; one Finished per choice, in choice order."""
        finished = [event async for event in self.events() if isinstance(event, Finished)]
        return sorted(finished, key=lambda event: event.index)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for handle in self._handles:
            if not handle.done:
                handle.cancel()
        self._on_close()


@contextlib.asynccontextmanager
async def cancel_on_disconnect(request: Request, cancel: Callable[[], None]) -> AsyncIterator[None]:
    """While the body runs, a client that hangs up triggers ``cancel`` (the request body is already read)."""

    async def watch() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass
        log.info("client disconnected; cancelling its work")
        cancel()

    watcher = asyncio.ensure_future(watch())
    try:
        yield
    finally:
        watcher.cancel()


async def job_result(job: Any) -> Any:
    """Wait for a studio ``Job`` without blocking the loop; returns or raises what ``job.result()`` does."""
    loop = asyncio.get_running_loop()
    settled: asyncio.Future[None] = loop.create_future()

    def on_done(_job: Any) -> None:
        loop.call_soon_threadsafe(lambda: settled.done() or settled.set_result(None))

    job.add_done_callback(on_done)
    await settled
    return job.result()
