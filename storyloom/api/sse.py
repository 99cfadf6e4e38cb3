"""Server-sent events in the exact form OpenAI streams them: ``data: <json>\\n\\n`` ... ``data: [DONE]``."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from typing import Any

from pydantic import BaseModel
from starlette.requests import Request
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

DONE = "data: [DONE]\n\n"


def sse(payload: BaseModel | dict[str, Any]) -> str:
    """One event line for a response model or a plain dict (error events)."""
    data = payload.model_dump_json() if isinstance(payload, BaseModel) else json.dumps(payload)
    return f"data: {data}\n\n"


class EventStreamResponse(StreamingResponse):
    """A ``text/event-stream`` response that calls ``on_close`` however the stream ends.

    Ending covers the last event sent, a client that hung up, and a cancelled task: the engine requests
    behind the stream are cancelled there and their queue slots freed.
    """

    def __init__(self, content: AsyncIterator[str], on_close: Callable[[], None] | None = None) -> None:
        super().__init__(
            content,
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )
        self._on_close = on_close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            if self._on_close is not None:
                self._on_close()


async def until_disconnected(request: Request, events: AsyncIterator[str]) -> AsyncIterator[str]:
    """Pass ``events`` on, stopping early once the client has gone."""
    async for event in events:
        if await request.is_disconnected():
            return
        yield event
