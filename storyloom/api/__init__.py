"""The local OpenAI-compatible API: other programs share the one engine, and each adapter is a model id.

Endpoints (errors always in OpenAI's ``{"error": {"message", "type", "param", "code"}}`` form):

- ``GET /v1/models``, ``GET /v1/models/{id}``: the base model (``engine.model_id``) and every loaded adapter.
- ``POST /v1/chat/completions``, ``POST /v1/completions``: ``model`` picks base or adapter; temperature,
  top_p, top_k, repetition_penalty, max_tokens, stop, seed, n, stream (+ ``stream_options.include_usage``).
- ``POST /v1/images/generations``: prompt, size "WxH", n, seed (+ negative_prompt, steps); b64_json PNGs.
- ``GET/POST /storyloom/adapters``, ``GET/DELETE /storyloom/adapters/{name}``: list, load, inspect, unload.
- ``POST /storyloom/stories`` (202, returns a run id), ``GET /storyloom/stories/{id}/events`` (SSE),
  ``GET /storyloom/stories/{id}`` (a run's status and draft, or a library story), ``DELETE`` (cancel a run).

Embedding (the GUI)::

    handle = start_in_thread(create_app(studio.engine, studio, api_key=key), host, port)
    handle.url  # "http://127.0.0.1:8765"
    handle.stop()

Headless: ``run_server(settings, host, port, api_key)`` (what ``storyloom serve`` calls).
"""

from __future__ import annotations

from storyloom.api.app import create_app
from storyloom.api.auth import UnsafeBindError
from storyloom.api.server import ServerHandle, run_server, serve, start_in_thread

__all__ = ["ServerHandle", "UnsafeBindError", "create_app", "run_server", "serve", "start_in_thread"]
