"""`create_app`: the FastAPI application over one engine (and, inside the desktop app, its studio)."""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

from fastapi import Depends, FastAPI

from storyloom.api import adapters, completions, images, models, stories
from storyloom.api.auth import bearer_check
from storyloom.api.bridge import Admission
from storyloom.api.context import ApiContext
from storyloom.api.errors import install_error_handlers

DEFAULT_MAX_QUEUE = 128


def create_app(
    engine: Any, studio: Any | None = None, api_key: str | None = None, max_queue: int = DEFAULT_MAX_QUEUE
) -> FastAPI:
    """The server's ASGI app. ``max_queue`` bounds the engine requests in flight from API clients."""
    dependencies = [Depends(bearer_check(api_key))] if api_key else []
    app = FastAPI(title="Storyloom local API", version="1", dependencies=dependencies)
    app.state.storyloom = ApiContext(engine=engine, studio=studio, admission=Admission(max_queue))
    app.state.story_runs = OrderedDict()
    app.state.api_key_set = bool(api_key)
    install_error_handlers(app)
    for module in (models, completions, images, adapters, stories):
        app.include_router(module.router)
    return app
