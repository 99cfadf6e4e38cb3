"""``/storyloom/stories``: start the story workflow, follow its events (SSE), fetch the result."""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool

from storyloom.api.context import Ctx
from storyloom.api.errors import ApiError, field_error
from storyloom.api.images import png_base64
from storyloom.api.schemas import StoryRequest
from storyloom.api.sse import DONE, EventStreamResponse, sse, until_disconnected
from storyloom.library import LibraryError
from storyloom.workflow import StoryDraft, StoryEvent, StoryOptions

router = APIRouter(prefix="/storyloom/stories")

MAX_KEPT_RUNS = 64


class StoryRun:
    """One story job as the API sees it: its events so far (JSON) and whether it has finished.

    Events arrive on worker threads and are appended on the loop, where followers read them.
    """

    def __init__(self, run_id: str) -> None:
        self.id = run_id
        self.job: Any = None
        self.events: list[dict[str, Any]] = []
        self.status = "running"
        self.draft: StoryDraft | None = None
        self._loop = asyncio.get_running_loop()
        self._changed = asyncio.Event()

    def post(self, event: StoryEvent) -> None:
        """The job's ``on_event`` callback (worker or engine thread)."""
        self._loop.call_soon_threadsafe(self._append, event)

    def _append(self, event: StoryEvent) -> None:
        self.events.append(event_json(event))
        if event.kind == "finished":
            self.status = event.text
            self.draft = event.draft
        self._changed.set()
        self._changed = asyncio.Event()

    async def follow(self) -> AsyncIterator[dict[str, Any]]:
        """Every event from the first, then new ones as they come, until ``finished``."""
        sent = 0
        while True:
            while sent < len(self.events):
                sent += 1
                yield self.events[sent - 1]
            if self.status != "running":
                return
            await self._changed.wait()


def event_json(event: StoryEvent) -> dict[str, Any]:
    return {
        "kind": event.kind,
        "step": event.step,
        "text": event.text,
        "source": event.source,
        "progress": list(event.progress) if event.progress else None,
        "row": event.row,
        "story_id": event.story_id,
        "has_image": event.image is not None,
    }


def draft_json(draft: StoryDraft) -> dict[str, Any]:
    fields = {f.name: getattr(draft, f.name) for f in dataclasses.fields(draft) if f.name != "image"}
    fields["adapters_used"] = [list(pair) for pair in draft.adapters_used]
    fields["image_b64_png"] = png_base64(draft.image) if draft.image is not None else None
    return fields


def _runs(request: Request) -> OrderedDict[str, StoryRun]:
    return request.app.state.story_runs


@router.post("", status_code=202)
async def start_story(body: StoryRequest, request: Request, ctx: Ctx) -> Any:
    studio = ctx.require_studio("the story workflow")
    try:
        options = StoryOptions(
            seed=body.seed,
            width=body.width,
            height=body.height,
            steps=body.steps,
            render_image=body.render_image,
            sampling=body.sampling,
        )
        run = StoryRun(f"run-{uuid.uuid4().hex}")
        run.job = studio.generate(body.idea, options, run.post)
    except ValueError as exc:
        raise field_error(exc) from exc
    runs = _runs(request)
    runs[run.id] = run
    while len(runs) > MAX_KEPT_RUNS:
        runs.popitem(last=False)
    return {"id": run.id, "object": "story.run", "status": run.status}


def _run(request: Request, run_id: str) -> StoryRun:
    run = _runs(request).get(run_id)
    if run is None:
        raise ApiError(404, f"unknown story run '{run_id}'", param="id", code="not_found")
    return run


@router.get("/{run_id}/events")
async def story_events(run_id: str, request: Request) -> EventStreamResponse:
    run = _run(request, run_id)

    async def events() -> AsyncIterator[str]:
        async for event in run.follow():
            yield sse(event)
        yield DONE

    return EventStreamResponse(until_disconnected(request, events()))


@router.get("/{story_id}")
async def get_story(story_id: str, request: Request, ctx: Ctx) -> Any:
    """A run started here (its status and, once finished, its draft) or any story in the library."""
    run = _runs(request).get(story_id)
    if run is not None:
        draft = draft_json(run.draft) if run.draft is not None else None
        return {"id": run.id, "object": "story.run", "status": run.status, "draft": draft}
    studio = ctx.require_studio("the story library")
    try:
        draft = await run_in_threadpool(studio.library.get, story_id)
    except LibraryError as exc:
        raise ApiError(404, str(exc), param="id", code="not_found") from exc
    return {"id": story_id, "object": "story", "status": "completed", "draft": draft_json(draft)}


@router.delete("/{run_id}")
async def cancel_story(run_id: str, request: Request) -> dict[str, Any]:
    run = _run(request, run_id)
    run.job.cancel()
    return {"id": run.id, "object": "story.run", "status": run.status, "cancel_requested": True}
