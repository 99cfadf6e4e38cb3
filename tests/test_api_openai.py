"""The official `openai` client against a real server on the demo engine: models, chat, completions, batching."""

from __future__ import annotations

import concurrent.futures
import socket

import httpx
import pytest

from tests.test_api_fixtures import (
    ADAPTERS,
    RecordingEngine,
    client,
    demo_fixture,  # noqa: F401
    engine_fixture,  # noqa: F401
    engine_paused,
    greedy,
    serve_fixture,  # noqa: F401
    wait_until,
)

MESSAGES = [{"role": "system", "content": "You write short tales."}, {"role": "user", "content": "A fox and a clock."}]
MAX_TOKENS = 12


def models(engine) -> list[str]:
    return [engine.model_id, *ADAPTERS]


def test_models_lists_the_base_and_every_adapter(engine, serve):
    listed = client(serve(engine)).models.list()
    assert [m.id for m in listed.data] == [engine.model_id, *sorted(ADAPTERS)]
    assert all(m.object == "model" and m.owned_by == "storyloom" for m in listed.data)
    assert client(serve(engine)).models.retrieve(ADAPTERS[0]).id == ADAPTERS[0]


@pytest.mark.parametrize("index", range(3))
def test_chat_matches_the_engine_for_each_model(engine, serve, index):
    model = models(engine)[index]
    reference = greedy(engine, MESSAGES, model, MAX_TOKENS)
    api = client(serve(engine))

    whole = api.chat.completions.create(model=model, messages=MESSAGES, max_tokens=MAX_TOKENS, temperature=0)
    assert whole.model == model
    assert whole.choices[0].message.content == reference.text
    assert whole.choices[0].finish_reason == reference.finish_reason
    assert whole.usage.prompt_tokens == reference.num_prompt_tokens == engine.count_tokens(MESSAGES)
    assert whole.usage.completion_tokens == reference.num_completion_tokens
    assert whole.usage.total_tokens == whole.usage.prompt_tokens + whole.usage.completion_tokens

    chunks = list(
        api.chat.completions.create(
            model=model,
            messages=MESSAGES,
            max_tokens=MAX_TOKENS,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == reference.text
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == reference.finish_reason
    assert len({c.id for c in chunks}) == 1
    assert chunks[-1].choices == [] and chunks[-1].usage == whole.usage


def test_raw_stream_is_openai_sse_ending_with_done(engine, serve):
    server = serve(engine)
    body = {"model": ADAPTERS[1], "prompt": "Once upon", "max_tokens": 4, "temperature": 0, "stream": True}
    with httpx.stream("POST", f"{server.url}/v1/completions", json=body) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in response.iter_lines() if line]
    assert all(line.startswith("data: ") for line in lines)
    assert lines[-1] == "data: [DONE]"


def test_text_completions_with_a_prompt_list_and_n(engine, serve):
    prompts = ["Once upon a time", "The clockmaker"]
    model = ADAPTERS[0]
    references = [greedy(engine, p, model, MAX_TOKENS) for p in prompts]
    result = client(serve(engine)).completions.create(
        model=model, prompt=prompts, max_tokens=MAX_TOKENS, temperature=0, n=2
    )
    assert [c.index for c in result.choices] == [0, 1, 2, 3]
    assert [c.text for c in result.choices] == [r.text for r in references for _ in range(2)]
    assert result.usage.prompt_tokens == sum(r.num_prompt_tokens for r in references)
    assert result.usage.completion_tokens == 2 * sum(r.num_completion_tokens for r in references)


def test_seeded_sampling_is_reproducible_and_choices_differ(engine, serve):
    api = client(serve(engine))
    ask = dict(model=engine.model_id, messages=MESSAGES, max_tokens=MAX_TOKENS, temperature=1.0, seed=7, n=2)
    first, second = api.chat.completions.create(**ask), api.chat.completions.create(**ask)
    texts = [c.message.content for c in first.choices]
    assert texts == [c.message.content for c in second.choices]
    assert texts[0] != texts[1]


def test_streamed_choices_are_reassembled_by_index(engine, serve):
    api = client(serve(engine))
    ask = dict(model=ADAPTERS[1], messages=MESSAGES, max_tokens=MAX_TOKENS, temperature=1.0, seed=3, n=2)
    whole = api.chat.completions.create(**ask)
    parts = ["", ""]
    for chunk in api.chat.completions.create(**ask, stream=True):
        for choice in chunk.choices:
            parts[choice.index] += choice.delta.content or ""
    assert parts == [c.message.content for c in whole.choices]


def test_stop_strings_end_the_answer(engine, serve):
    reference = greedy(engine, MESSAGES, ADAPTERS[0], MAX_TOKENS).text
    stop = reference[len(reference) // 2 :][:2]
    result = client(serve(engine)).chat.completions.create(
        model=ADAPTERS[0], messages=MESSAGES, max_tokens=MAX_TOKENS, temperature=0, stop=[stop]
    )
    assert result.choices[0].finish_reason == "stop"
    assert result.choices[0].message.content == reference[: reference.index(stop)]


def test_concurrent_clients_get_their_own_answers_in_shared_batches(engine, serve):
    recorder = RecordingEngine(engine)
    api = client(serve(recorder))
    asks = [(model, stream) for model in models(engine) for stream in (False, True)]
    references = [greedy(engine, MESSAGES, model, MAX_TOKENS).text for model, _ in asks]

    def ask(model: str, stream: bool) -> str:
        kwargs = dict(model=model, messages=MESSAGES, max_tokens=MAX_TOKENS, temperature=0)
        if not stream:
            return api.chat.completions.create(**kwargs).choices[0].message.content
        chunks = api.chat.completions.create(**kwargs, stream=True)
        return "".join(c.choices[0].delta.content or "" for c in chunks)

    with concurrent.futures.ThreadPoolExecutor(len(asks)) as pool:
        with engine_paused(engine):
            futures = [pool.submit(ask, model, stream) for model, stream in asks]
            handles = recorder.wait_for_requests(len(asks))
        answers = [f.result() for f in futures]

    assert answers == references
    by_adapter = {h.adapter for h in handles}
    assert by_adapter == {None, *ADAPTERS}
    assert engine.stats().shared_decode_steps(*(h.request_id for h in handles)) >= 1


def test_a_client_that_hangs_up_mid_stream_cancels_its_request(engine, serve):
    recorder = RecordingEngine(engine)
    server = serve(recorder, max_queue=1)
    body = {"model": ADAPTERS[0], "messages": MESSAGES, "max_tokens": 64, "stream": True}
    with engine_paused(engine):
        with httpx.stream("POST", f"{server.url}/v1/chat/completions", json=body) as response:
            opening = next(response.iter_lines())
            assert '"role":"assistant"' in opening
        (handle,) = recorder.wait_for_requests(1)
        wait_until(lambda: handle.cancel_requested)
    assert handle.result().finish_reason == "cancelled"
    assert handle.result().num_completion_tokens == 0
    # Its slot is free again: with max_queue=1 the next request is served.
    again = client(server).chat.completions.create(model=ADAPTERS[0], messages=MESSAGES, max_tokens=2)
    assert again.choices[0].message.content is not None


def test_a_client_that_hangs_up_while_waiting_cancels_its_request(engine, serve):
    recorder = RecordingEngine(engine)
    server = serve(recorder)
    port = int(server.url.rsplit(":", 1)[1])
    payload = f'{{"model": "{engine.model_id}", "prompt": "Once", "max_tokens": 64}}'.encode()
    request = (
        b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        + f"Content-Length: {len(payload)}\r\n\r\n".encode()
        + payload
    )
    with engine_paused(engine):
        with socket.create_connection(("127.0.0.1", port)) as raw:
            raw.sendall(request)
            (handle,) = recorder.wait_for_requests(1)
        wait_until(lambda: handle.cancel_requested)
    assert handle.result().finish_reason == "cancelled"
