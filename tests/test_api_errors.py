"""Bad input gets OpenAI-format errors naming the field and the reason, and never disturbs other requests."""

from __future__ import annotations

import concurrent.futures

import httpx
import openai
import pytest

from engine import Engine, EngineConfig
from storyloom.api import UnsafeBindError, create_app, run_server, serve, start_in_thread
from storyloom.api.auth import is_loopback
from storyloom.settings import Settings
from tests.test_api_fixtures import (
    ADAPTERS,
    MAX_SEQ_LEN,
    RecordingEngine,
    client,
    demo_fixture,  # noqa: F401
    engine_fixture,  # noqa: F401
    engine_paused,
    greedy,
    serve_fixture,  # noqa: F401
    wait_until,
)

MESSAGES = [{"role": "user", "content": "Tell me about the lantern."}]


def chat_body(model: str, **fields) -> dict:
    return {"model": model, "messages": MESSAGES, "max_tokens": 4, **fields}


def post(server, path: str, **kwargs) -> httpx.Response:
    return httpx.post(f"{server.url}{path}", **kwargs)


def error_of(response: httpx.Response) -> dict:
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    return body["error"]


def test_unknown_model_is_404_listing_the_known_ids(engine, serve):
    server = serve(engine)
    with pytest.raises(openai.NotFoundError) as caught:
        client(server).chat.completions.create(model="no-such-adapter", messages=MESSAGES)
    error = caught.value.body
    assert error["code"] == "model_not_found" and error["param"] == "model"
    for known in (engine.model_id, *ADAPTERS):
        assert known in error["message"]
    response = post(server, "/v1/completions", json={"model": "nope", "prompt": "x"})
    assert response.status_code == 404 and "nope" in error_of(response)["message"]


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"temperature": -1}, "temperature"),
        ({"top_p": 0}, "top_p"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_tokens": "many"}, "max_tokens"),
        ({"n": 0}, "n"),
        ({"stop": 5}, "stop"),
        ({"stop": [""]}, "stop"),
        ({"logprobs": True}, "logprobs"),
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "wizard", "content": "hi"}]}, "messages.0.role"),
        ({"model": None}, "model"),
    ],
)
def test_invalid_fields_are_400_naming_the_field(engine, serve, fields, param):
    body = {"model": engine.model_id, "messages": MESSAGES, **fields}
    response = post(serve(engine), "/v1/chat/completions", json=body)
    assert response.status_code == 400
    error = error_of(response)
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param or error["param"].startswith(f"{param}.")
    assert param.split(".")[0] in error["message"]


def test_a_missing_model_is_400(engine, serve):
    response = post(serve(engine), "/v1/chat/completions", json={"messages": MESSAGES})
    assert response.status_code == 400 and error_of(response)["param"] == "model"


def test_invalid_json_is_400(engine, serve):
    response = post(
        serve(engine), "/v1/chat/completions", content=b'{"model": ', headers={"content-type": "application/json"}
    )
    assert response.status_code == 400
    assert "JSON" in error_of(response)["message"]


def test_a_prompt_too_long_is_400_with_the_limit(engine, serve):
    server = serve(engine)
    long_messages = [{"role": "user", "content": "lantern " * MAX_SEQ_LEN}]
    with pytest.raises(openai.BadRequestError) as caught:
        client(server).chat.completions.create(model=engine.model_id, messages=long_messages)
    assert caught.value.body["code"] == "context_length_exceeded"
    assert str(MAX_SEQ_LEN) in caught.value.body["message"]
    overflow = post(
        server, "/v1/completions", json={"model": engine.model_id, "prompt": "x", "max_tokens": MAX_SEQ_LEN}
    )
    assert overflow.status_code == 400
    assert error_of(overflow)["param"] == "max_tokens" and str(MAX_SEQ_LEN) in error_of(overflow)["message"]


def test_with_an_api_key_every_request_needs_it(engine, serve):
    server = serve(engine, api_key="s3cret")
    for api_key in ("wrong", "s3cret-not"):
        with pytest.raises(openai.AuthenticationError):
            client(server, api_key=api_key).models.list()
    missing = httpx.get(f"{server.url}/v1/models")
    assert missing.status_code == 401 and error_of(missing)["code"] == "invalid_api_key"
    assert httpx.get(f"{server.url}/storyloom/adapters").status_code == 401
    assert client(server, api_key="s3cret").models.list().data[0].id == engine.model_id


def test_too_many_queued_requests_is_429_with_retry_after(engine, serve):
    recorder = RecordingEngine(engine)
    server = serve(recorder, max_queue=2)
    with concurrent.futures.ThreadPoolExecutor(2) as pool, engine_paused(engine):
        waiting = [pool.submit(post, server, "/v1/chat/completions", json=chat_body(engine.model_id)) for _ in range(2)]
        recorder.wait_for_requests(2)
        refused = post(server, "/v1/chat/completions", json=chat_body(engine.model_id))
        with pytest.raises(openai.RateLimitError):
            client(server).chat.completions.create(**chat_body(ADAPTERS[0]))
    assert refused.status_code == 429 and int(refused.headers["Retry-After"]) >= 1
    assert error_of(refused)["code"] == "queue_full"
    assert [f.result().status_code for f in waiting] == [200, 200]


def test_the_engines_own_queue_limit_is_429_too(demo, serve):
    config = EngineConfig(model=demo.llm, device="cpu", max_seq_len=MAX_SEQ_LEN, max_queue=1)
    with Engine(config) as small:
        server = serve(small)
        with concurrent.futures.ThreadPoolExecutor(1) as pool, engine_paused(small):
            waiting = pool.submit(post, server, "/v1/completions", json={"model": small.model_id, "prompt": "a"})
            wait_until(lambda: small.stats().num_waiting >= 1)
            refused = post(server, "/v1/completions", json={"model": small.model_id, "prompt": "b"})
        assert refused.status_code == 429 and "Retry-After" in refused.headers
        assert waiting.result().status_code == 200


def test_bad_requests_do_not_disturb_a_running_one(engine, serve):
    recorder = RecordingEngine(engine)
    server = serve(recorder)
    model = ADAPTERS[1]
    reference = greedy(engine, MESSAGES, model, 16).text

    def good() -> str:
        chunks = client(server).chat.completions.create(
            model=model, messages=MESSAGES, max_tokens=16, temperature=0, stream=True
        )
        return "".join(c.choices[0].delta.content or "" for c in chunks)

    bad_bodies = [
        chat_body("nope"),
        chat_body(model, temperature=-3),
        chat_body(model, messages=[{"role": "user", "content": "x " * MAX_SEQ_LEN}]),
        chat_body(model, max_tokens=MAX_SEQ_LEN * 2),
    ]
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        with engine_paused(engine):
            answer = pool.submit(good)
            recorder.wait_for_requests(1)
            statuses = [post(server, "/v1/chat/completions", json=body).status_code for body in bad_bodies]
            statuses.append(
                post(
                    server, "/v1/chat/completions", content=b"{", headers={"content-type": "application/json"}
                ).status_code
            )
        assert answer.result() == reference
    assert statuses == [404, 400, 400, 400, 400]
    assert len(recorder.handles) == 1


def test_binding_beyond_loopback_needs_an_api_key(engine, tmp_path):
    assert is_loopback("127.0.0.1") and is_loopback("localhost") and is_loopback("::1") and is_loopback("127.0.0.2")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.5") and not is_loopback("example.org")
    with pytest.raises(UnsafeBindError, match="API key"):
        start_in_thread(create_app(engine), "0.0.0.0", 0)
    with pytest.raises(UnsafeBindError, match=r"0\.0\.0\.0"):
        serve(engine, host="0.0.0.0", port=0)
    # The CLI's entry point refuses before it spends time loading models.
    with pytest.raises(UnsafeBindError):
        run_server(Settings(use_demo_models=True, data_dir=tmp_path), host="192.168.1.5", port=0, api_key=None)
    assert not any(tmp_path.iterdir())


def test_a_port_in_use_is_a_clear_error(engine, serve):
    taken = serve(engine)
    port = int(taken.url.rsplit(":", 1)[1])
    with pytest.raises(OSError, match=f"127.0.0.1:{port}"):
        start_in_thread(create_app(engine), "127.0.0.1", port)
    assert client(taken).models.list().data[0].id == engine.model_id


def test_unknown_routes_answer_in_openai_format(engine, serve):
    server = serve(engine)
    missing = httpx.get(f"{server.url}/v1/embeddings")
    assert missing.status_code == 404 and "/v1/embeddings" in error_of(missing)["message"]
    wrong_method = httpx.put(f"{server.url}/v1/models")
    assert wrong_method.status_code == 405 and error_of(wrong_method)["type"] == "invalid_request_error"
