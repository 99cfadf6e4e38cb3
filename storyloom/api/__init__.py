"""The local OpenAI-compatible API: other programs share the one engine, each adapter is a model id."""

from __future__ import annotations

from storyloom.api.app import create_app
from storyloom.api.auth import UnsafeBindError
from storyloom.api.server import ServerHandle, run_server, serve, start_in_thread

__all__ = ["ServerHandle", "UnsafeBindError", "create_app", "run_server", "serve", "start_in_thread"]
