"""Running the API: blocking (`serve`, `run_server` for the CLI) or on a thread (`start_in_thread`: GUI)."""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING, Any

import uvicorn
from fastapi import FastAPI

from storyloom.api.app import create_app
from storyloom.api.auth import check_bind

if TYPE_CHECKING:
    from storyloom.settings import Settings

log = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8765
GRACEFUL_SHUTDOWN_S = 5
STARTUP_POLL_S = 0.01


def _config(app: FastAPI, host: str, port: int) -> uvicorn.Config:
    check_bind(host, app.state.api_key_set)
    # log_config=None: uvicorn logs through the application's logging setup instead of replacing it.
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        log_config=None,
        access_log=False,
        lifespan="off",
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S,
    )


def _engine_and_studio(studio_or_engine: Any) -> tuple[Any, Any | None]:
    if hasattr(studio_or_engine, "submit"):
        return studio_or_engine, None
    return studio_or_engine.engine, studio_or_engine


def serve(
    studio_or_engine: Any, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, api_key: str | None = None
) -> None:
    """Serve until interrupted (Ctrl+C); beyond loopback without ``api_key``: UnsafeBindError."""
    engine, studio = _engine_and_studio(studio_or_engine)
    config = _config(create_app(engine, studio, api_key), host, port)
    log.info("Storyloom API on http://%s:%d/v1 (model %s)", host, port, engine.model_id)
    uvicorn.Server(config).run()


def run_server(
    settings: Settings, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, api_key: str | None = None
) -> None:
    """``storyloom serve``: load the models named in ``settings``, then serve until interrupted."""
    from storyloom.studio import Studio

    check_bind(host, bool(api_key))  # before minutes of model loading, not after
    with Studio(settings) as studio:
        studio.start().result()
        serve(studio, host, port, api_key)


class ServerHandle:
    """A server running on its own thread; ``stop()`` shuts it down and waits for the thread."""

    def __init__(self, server: uvicorn.Server, thread: threading.Thread, url: str) -> None:
        self._server = server
        self._thread = thread
        self.url = url

    @property
    def is_running(self) -> bool:
        return self._thread.is_alive()

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join()
        log.info("API server at %s stopped", self.url)


def start_in_thread(app: FastAPI, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT) -> ServerHandle:
    """Start serving ``app`` on a daemon thread; returns once the socket listens (port 0 picks a free one)."""
    server = uvicorn.Server(_config(app, host, port))
    failure: list[BaseException] = []

    def run() -> None:
        try:
            server.run()
        except BaseException as exc:  # uvicorn exits with SystemExit when it cannot bind
            failure.append(exc)

    thread = threading.Thread(target=run, name=f"storyloom-api-{port}", daemon=True)
    thread.start()
    while not server.started:
        if not thread.is_alive():
            raise OSError(f"the API server could not start on {host}:{port} (is the port in use?)") from (
                failure[0] if failure else None
            )
        time.sleep(STARTUP_POLL_S)
    bound_port = server.servers[0].sockets[0].getsockname()[1]
    shown_host = f"[{host}]" if ":" in host else host
    handle = ServerHandle(server, thread, f"http://{shown_host}:{bound_port}")
    log.info("API server listening at %s", handle.url)
    return handle
