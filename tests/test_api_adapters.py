"""``/storyloom/adapters``: list, load from a local folder (then usable as a model id), unload."""

from __future__ import annotations

import httpx
import openai
import pytest

from tests.test_api_fixtures import (
    ADAPTERS,
    client,
    demo_fixture,  # noqa: F401
    engine_fixture,  # noqa: F401
    greedy,
    serve_fixture,  # noqa: F401
)

MESSAGES = [{"role": "user", "content": "Name the brass lantern."}]


def test_list_and_get_adapters(engine, serve):
    server = serve(engine)
    listed = httpx.get(f"{server.url}/storyloom/adapters").json()
    assert [a["name"] for a in listed["data"]] == sorted(ADAPTERS)
    one = httpx.get(f"{server.url}/storyloom/adapters/{ADAPTERS[0]}").json()
    info = engine.adapters.get(ADAPTERS[0])
    assert one["sha256"] == info.sha256 and one["ranks"] == info.ranks
    missing = httpx.get(f"{server.url}/storyloom/adapters/nope")
    assert missing.status_code == 404 and "nope" in missing.json()["error"]["message"]


def test_load_use_and_unload_an_adapter(engine, serve, demo):
    server = serve(engine)
    api = client(server)
    loaded = httpx.post(
        f"{server.url}/storyloom/adapters", json={"name": "copy-of-writer", "path": str(demo.adapters[ADAPTERS[0]])}
    )
    assert loaded.status_code == 201 and loaded.json()["name"] == "copy-of-writer"
    try:
        assert "copy-of-writer" in [m.id for m in api.models.list()]
        answer = api.chat.completions.create(model="copy-of-writer", messages=MESSAGES, max_tokens=10, temperature=0)
        # The same weights under another name answer exactly as the original adapter does.
        assert answer.choices[0].message.content == greedy(engine, MESSAGES, ADAPTERS[0], 10).text
    finally:
        unloaded = httpx.delete(f"{server.url}/storyloom/adapters/copy-of-writer")
    assert unloaded.status_code == 200 and unloaded.json()["deleted"] is True
    assert "copy-of-writer" not in [m.id for m in api.models.list()]
    with pytest.raises(openai.NotFoundError):
        api.chat.completions.create(model="copy-of-writer", messages=MESSAGES, max_tokens=2)


@pytest.mark.parametrize(
    ("body", "status", "needle"),
    [
        ({"name": "x", "path": "/no/such/folder"}, 400, "/no/such/folder"),
        ({"name": ADAPTERS[0], "path": "."}, 400, "already loaded"),
        ({"name": "bad name!", "path": "."}, 400, "name"),
        ({"name": "x"}, 400, "path"),
    ],
)
def test_bad_adapter_loads_are_400(engine, serve, demo, body, status, needle):
    if body.get("path") == ".":
        body = {**body, "path": str(demo.adapters[ADAPTERS[1]])}
    response = httpx.post(f"{serve(engine).url}/storyloom/adapters", json=body)
    assert response.status_code == status
    assert needle in response.json()["error"]["message"]
    assert engine.adapters.names() == sorted(ADAPTERS)


def test_a_pickle_adapter_is_refused(engine, serve, demo, tmp_path):
    folder = tmp_path / "pickled"
    folder.mkdir()
    (folder / "adapter_config.json").write_text((demo.adapters[ADAPTERS[0]] / "adapter_config.json").read_text())
    (folder / "adapter_model.bin").write_bytes(b"not really a pickle")
    response = httpx.post(f"{serve(engine).url}/storyloom/adapters", json={"name": "pickled", "path": str(folder)})
    assert response.status_code == 400
    assert "safetensors" in response.json()["error"]["message"]


def test_unloading_an_unknown_adapter_is_404(engine, serve):
    response = httpx.delete(f"{serve(engine).url}/storyloom/adapters/nope")
    assert response.status_code == 404
    for name in ADAPTERS:
        assert name in response.json()["error"]["message"]
