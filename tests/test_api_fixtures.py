"""Shared by the API tests: the demo engine, a real uvicorn server on a free loopback port, engine gates."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import openai
import pytest

from engine import Engine, EngineConfig, SamplingParams
from storyloom.api import ServerHandle, create_app, start_in_thread
from storyloom.demo import DemoModels, ensure_demo_models

ADAPTERS = ("story-writer", "sdxl-prompter")
MAX_SEQ_LEN = 256
POLL_S = 0.005


@pytest.fixture(scope="session", name="demo")
def demo_fixture(tmp_path_factory: pytest.TempPathFactory) -> DemoModels:
    # One fixed folder: each test module that imports this fixture finds the set already built.
    return ensure_demo_models(tmp_path_factory.getbasetemp() / "api-demo")


@pytest.fixture(scope="module", name="engine")
def engine_fixture(demo: DemoModels) -> Iterator[Engine]:
    config = EngineConfig(model=demo.llm, device="cpu", max_seq_len=MAX_SEQ_LEN, max_batch_size=8)
    with Engine(config) as eng:
        for name in ADAPTERS:
            eng.adapters.load(name, demo.adapters[name])
        yield eng


class RecordingEngine:
    """The real engine, remembering every request handle the server submits."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self.handles: list[Any] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._engine, name)

    def submit_batch(self, *args: Any, **kwargs: Any) -> list[Any]:
        handles = self._engine.submit_batch(*args, **kwargs)
        self.handles += handles
        return handles

    def wait_for_requests(self, count: int) -> list[Any]:
        wait_until(lambda: len(self.handles) >= count)
        return self.handles[:count]


def wait_until(condition: Callable[[], bool]) -> None:
    while not condition():
        time.sleep(POLL_S)


@contextlib.contextmanager
def engine_paused(engine: Engine) -> Iterator[None]:
    """Hold the engine thread in a job: submitted requests wait, then run together once released."""
    started, release = threading.Event(), threading.Event()

    def hold() -> None:
        started.set()
        release.wait()

    done = engine.run_on_engine_thread(hold)
    started.wait()
    try:
        yield
    finally:
        release.set()
        done.result()


@pytest.fixture(name="serve")
def serve_fixture() -> Iterator[Callable[..., ServerHandle]]:
    """``serve(engine, **create_app_kwargs)`` starts a server on a free port; all are stopped afterwards."""
    handles: list[ServerHandle] = []

    def start(engine: Any, **kwargs: Any) -> ServerHandle:
        handles.append(start_in_thread(create_app(engine, **kwargs), "127.0.0.1", 0))
        return handles[-1]

    yield start
    for handle in handles:
        handle.stop()


def client(server: ServerHandle, api_key: str = "unused") -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=api_key, max_retries=0)


def greedy(engine: Engine, prompt: Any, model: str, max_tokens: int) -> Any:
    """The engine's own greedy answer for ``prompt`` on ``model`` alone: the independent reference."""
    adapter = None if model == engine.model_id else model
    return engine.generate([prompt], SamplingParams(max_tokens=max_tokens, temperature=0), [adapter])[0]
