"""Images and the story workflow through the API, on a Studio running the demo models (LLM + tiny SDXL)."""

from __future__ import annotations

import base64
import concurrent.futures
import io
import json
from collections.abc import Iterator

import httpx
import numpy as np
import pytest
from PIL import Image

from storyloom.settings import Settings
from storyloom.studio import Studio
from storyloom.workflow import StoryDraft
from tests.test_api_fixtures import (
    ADAPTERS,
    RecordingEngine,
    client,
    demo_fixture,  # noqa: F401
    engine_paused,
    serve_fixture,  # noqa: F401
    wait_until,
)

SIZE = 512  # the smallest size the SDXL renderer accepts
STEPS = 1


@pytest.fixture(scope="module", name="studio")
def studio_fixture(demo, tmp_path_factory) -> Iterator[Studio]:
    data_dir = tmp_path_factory.mktemp("studio-data")
    (data_dir / demo.root.name).symlink_to(demo.root, target_is_directory=True)
    with Studio(Settings(use_demo_models=True, data_dir=data_dir)) as studio:
        studio.start().result()
        yield studio


def decode_png(b64: str) -> Image.Image:
    raw = base64.b64decode(b64)
    assert raw.startswith(b"\x89PNG")
    return Image.open(io.BytesIO(raw))


def sse_events(response: httpx.Response) -> list[dict]:
    data = [line.removeprefix("data: ") for line in response.iter_lines() if line.startswith("data: ")]
    assert data[-1] == "[DONE]"
    return [json.loads(item) for item in data[:-1]]


def test_images_are_the_studios_render_for_the_seed(studio, serve):
    api = client(serve(studio.engine, studio=studio))
    result = api.images.generate(
        prompt="a brass lantern in the snow",
        size=f"{SIZE}x{SIZE}",
        n=1,
        response_format="b64_json",
        extra_body={"seed": 11, "steps": STEPS},
    )
    image = decode_png(result.data[0].b64_json)
    assert image.size == (SIZE, SIZE)
    draft = StoryDraft(idea="", image_prompt="a brass lantern in the snow", width=SIZE, height=SIZE, steps=STEPS)
    reference = studio.new_image(draft, lambda _event: None, seed=11).result().image
    assert np.array_equal(np.asarray(image.convert("RGB")), np.asarray(reference.convert("RGB")))


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"prompt": "x", "size": "64x64"}, "width"),
        ({"prompt": "x", "size": "big"}, "size"),
        ({"prompt": "x", "response_format": "url"}, "response_format"),
        ({"prompt": ""}, "prompt"),
        ({"prompt": "x", "n": 0}, "n"),
    ],
)
def test_bad_image_requests_are_400(studio, serve, body, param):
    response = httpx.post(f"{serve(studio.engine, studio=studio).url}/v1/images/generations", json=body)
    assert response.status_code == 400
    assert param in response.json()["error"]["message"]


def test_images_need_a_studio(studio, serve):
    response = httpx.post(f"{serve(studio.engine).url}/v1/images/generations", json={"prompt": "x"})
    assert response.status_code == 501 and response.json()["error"]["code"] == "no_studio"


def test_a_story_runs_streams_its_events_and_is_fetched(studio, serve):
    server = serve(studio.engine, studio=studio)
    started = httpx.post(
        f"{server.url}/storyloom/stories",
        json={"idea": "a clockmaker's daughter and a sleeping fox", "render_image": False, "seed": 5},
    )
    assert started.status_code == 202
    run_id = started.json()["id"]
    with httpx.stream("GET", f"{server.url}/storyloom/stories/{run_id}/events", timeout=None) as response:
        events = sse_events(response)
    assert events[-1]["kind"] == "finished" and events[-1]["text"] == "completed"
    steps_done = {e["step"]: e["text"] for e in events if e["kind"] == "step_finished"}
    assert {"concept", "story", "prompt"} <= set(steps_done)

    fetched = httpx.get(f"{server.url}/storyloom/stories/{run_id}").json()
    assert fetched["status"] == "completed"
    draft = fetched["draft"]
    assert draft["story"].strip() and draft["concept"].strip()
    assert any(e["kind"] == "text_delta" and e["step"] == "story" for e in events)
    assert draft["story_id"] == events[-1]["story_id"]
    # The saved story is in the library under its own id.
    saved = httpx.get(f"{server.url}/storyloom/stories/{draft['story_id']}").json()
    assert saved["draft"]["story"] == draft["story"]


def test_bad_story_requests(studio, serve):
    server = serve(studio.engine, studio=studio)
    empty = httpx.post(f"{server.url}/storyloom/stories", json={"idea": "   "})
    assert empty.status_code == 400 and empty.json()["error"]["param"] == "idea"
    bad_size = httpx.post(f"{server.url}/storyloom/stories", json={"idea": "a fox", "width": 13})
    assert bad_size.status_code == 400 and bad_size.json()["error"]["param"] == "width"
    assert httpx.get(f"{server.url}/storyloom/stories/run-nope").status_code == 404
    assert httpx.get(f"{server.url}/storyloom/stories/run-nope/events").status_code == 404


def test_api_and_studio_requests_share_the_engines_batches(studio, serve):
    recorder = RecordingEngine(studio.engine)
    api = client(serve(recorder, studio=studio))
    messages = [{"role": "user", "content": "A lantern on a hill."}]
    with concurrent.futures.ThreadPoolExecutor(1) as pool, engine_paused(studio.engine):
        job = studio.compare(
            "A lantern on a hill.", [None, ADAPTERS[0]], lambda _event: None, {"max_tokens": 6, "temperature": 0}
        )
        wait_until(lambda: studio.engine.stats().num_waiting >= 2)
        answer = pool.submit(
            api.chat.completions.create, model=ADAPTERS[1], messages=messages, max_tokens=6, temperature=0
        )
        (handle,) = recorder.wait_for_requests(1)
    assert len(job.result()) == 2 and answer.result().choices[0].message.content is not None
    shared = [
        step
        for step in studio.engine.stats().recent_steps
        if step.kind == "decode" and handle.request_id in step.request_ids
    ]
    assert any(set(step.adapters) == {None, *ADAPTERS} for step in shared)
