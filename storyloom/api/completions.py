"""``POST /v1/chat/completions`` and ``POST /v1/completions``: one engine request per choice, batched."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, replace
from typing import Any

from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool

from engine.config import SamplingParams
from storyloom.api.bridge import Delta, Finished, RequestStream, cancel_on_disconnect
from storyloom.api.context import ApiContext, Ctx
from storyloom.api.errors import ApiError, field_error
from storyloom.api.schemas import (
    AssistantMessage,
    ChatChoice,
    ChatChunkChoice,
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatDelta,
    Completion,
    CompletionRequest,
    SamplingFields,
    TextChoice,
    Usage,
)
from storyloom.api.sse import DONE, EventStreamResponse, sse, until_disconnected

router = APIRouter()

# Engine finish reasons -> OpenAI's. "cancelled" only reaches a client that has already hung up.
FINISH_REASONS = {"stop": "stop", "length": "length", "cancelled": "stop"}


@dataclass(frozen=True)
class Reply:
    """Identity of one response: every chunk repeats it."""

    id: str
    created: int
    model: str


class ChatFormat:
    prefix = "chatcmpl"
    prompt_param = "messages"

    @staticmethod
    def opening(reply: Reply, index: int) -> ChatCompletionChunk | None:
        delta = ChatDelta(role="assistant", content="")
        return ChatCompletionChunk(**vars(reply), choices=[ChatChunkChoice(index=index, delta=delta)])

    @staticmethod
    def delta(reply: Reply, index: int, text: str) -> ChatCompletionChunk:
        delta = ChatDelta(content=text)
        return ChatCompletionChunk(**vars(reply), choices=[ChatChunkChoice(index=index, delta=delta)])

    @staticmethod
    def ending(reply: Reply, index: int, finish_reason: str) -> ChatCompletionChunk:
        choice = ChatChunkChoice(index=index, delta=ChatDelta(), finish_reason=finish_reason)
        return ChatCompletionChunk(**vars(reply), choices=[choice])

    @staticmethod
    def usage(reply: Reply, usage: Usage) -> ChatCompletionChunk:
        return ChatCompletionChunk(**vars(reply), choices=[], usage=usage)

    @staticmethod
    def whole(reply: Reply, results: Sequence[Any], usage: Usage) -> ChatCompletion:
        choices = [
            ChatChoice(index=i, message=AssistantMessage(content=r.text), finish_reason=_finish(r))
            for i, r in enumerate(results)
        ]
        return ChatCompletion(**vars(reply), choices=choices, usage=usage)


class TextFormat:
    prefix = "cmpl"
    prompt_param = "prompt"

    @staticmethod
    def opening(reply: Reply, index: int) -> Completion | None:
        return None

    @staticmethod
    def delta(reply: Reply, index: int, text: str) -> Completion:
        return Completion(**vars(reply), choices=[TextChoice(index=index, text=text)])

    @staticmethod
    def ending(reply: Reply, index: int, finish_reason: str) -> Completion:
        return Completion(**vars(reply), choices=[TextChoice(index=index, text="", finish_reason=finish_reason)])

    @staticmethod
    def usage(reply: Reply, usage: Usage) -> Completion:
        return Completion(**vars(reply), choices=[], usage=usage)

    @staticmethod
    def whole(reply: Reply, results: Sequence[Any], usage: Usage) -> Completion:
        choices = [TextChoice(index=i, text=r.text, finish_reason=_finish(r)) for i, r in enumerate(results)]
        return Completion(**vars(reply), choices=choices, usage=usage)


Format = type[ChatFormat] | type[TextFormat]


@router.post("/v1/chat/completions")
async def chat_completions(body: ChatCompletionRequest, request: Request, ctx: Ctx) -> Any:
    prompt = [message.as_engine_message() for message in body.messages]
    return await _complete(request, ctx, body, [prompt], ChatFormat)


@router.post("/v1/completions")
async def completions(body: CompletionRequest, request: Request, ctx: Ctx) -> Any:
    return await _complete(request, ctx, body, body.prompts(), TextFormat)


async def _complete(request: Request, ctx: ApiContext, body: SamplingFields, prompts: list[Any], fmt: Format) -> Any:
    adapter = ctx.resolve_model(body.model)
    num_tokens = await run_in_threadpool(lambda: [ctx.engine.count_tokens(p) for p in prompts])
    sampling = _sampling(body, _token_budget(ctx.engine.max_seq_len, num_tokens, body, fmt.prompt_param))
    # Choice k of prompt i is engine request i * n + k; a seeded request gives each choice its own seed.
    jobs = [prompt for prompt in prompts for _ in range(body.n)]
    samplings = [
        sampling if sampling.seed is None else replace(sampling, seed=sampling.seed + k)
        for _ in prompts
        for k in range(body.n)
    ]
    ctx.admission.acquire(len(jobs))
    try:
        handles = ctx.engine.submit_batch(jobs, samplings, [adapter] * len(jobs))
    except BaseException:
        ctx.admission.release(len(jobs))
        raise
    stream = RequestStream(handles, on_close=lambda: ctx.admission.release(len(jobs)))
    reply = Reply(f"{fmt.prefix}-{uuid.uuid4().hex}", int(time.time()), body.model)
    if body.stream:
        events = _stream_events(stream, reply, fmt, len(jobs), body.n, body.include_usage)
        return EventStreamResponse(until_disconnected(request, events), on_close=stream.close)
    try:
        async with cancel_on_disconnect(request, stream.close):
            finished = await stream.results()
    finally:
        stream.close()
    results = [_result_or_raise(event) for event in finished]
    return fmt.whole(reply, results, _usage(results, body.n))


def _token_budget(max_seq_len: int, num_tokens: list[int], body: SamplingFields, param: str) -> int:
    """max_tokens for every choice: as asked (when it fits the context) or all the context left."""
    longest = max(num_tokens)
    if longest >= max_seq_len:
        raise ApiError(
            400,
            f"{param}: the prompt is {longest} tokens; this model's context limit is {max_seq_len} tokens",
            param=param,
            code="context_length_exceeded",
        )
    asked = body.token_budget
    if asked is None:
        return max_seq_len - longest
    if isinstance(asked, int) and asked >= 1 and longest + asked > max_seq_len:
        raise ApiError(
            400,
            f"max_tokens: the prompt ({longest} tokens) plus max_tokens ({asked}) exceeds this model's "
            f"context limit of {max_seq_len} tokens",
            param="max_tokens",
            code="context_length_exceeded",
        )
    return asked


def _sampling(body: SamplingFields, max_tokens: int) -> SamplingParams:
    stop = (body.stop,) if isinstance(body.stop, str) else tuple(body.stop or ())
    given = {
        "temperature": body.temperature,
        "top_p": body.top_p,
        "top_k": body.top_k,
        "repetition_penalty": body.repetition_penalty,
        "seed": body.seed,
    }
    try:
        return SamplingParams(max_tokens=max_tokens, stop=stop, **{k: v for k, v in given.items() if v is not None})
    except ValueError as exc:
        raise field_error(exc) from exc


async def _stream_events(
    stream: RequestStream, reply: Reply, fmt: Format, num_choices: int, n: int, include_usage: bool
) -> AsyncIterator[str]:
    for index in range(num_choices):
        opening = fmt.opening(reply, index)
        if opening is not None:
            yield sse(opening)
    results: dict[int, Any] = {}
    async for event in stream.events():
        if isinstance(event, Delta):
            yield sse(fmt.delta(reply, event.index, event.text))
            continue
        try:
            results[event.index] = _result_or_raise(event)
        except ApiError as exc:
            yield sse(exc.body())
            continue
        yield sse(fmt.ending(reply, event.index, _finish(results[event.index])))
    if include_usage and len(results) == num_choices:
        yield sse(fmt.usage(reply, _usage([results[i] for i in range(num_choices)], n)))
    yield DONE


def _result_or_raise(event: Finished) -> Any:
    if event.result is None:
        raise ApiError(500, f"generation failed: {event.error}", type="server_error")
    if event.result.finish_reason == "error":
        raise ApiError(500, f"generation failed: {event.result.error}", type="server_error")
    return event.result


def _finish(result: Any) -> str:
    return FINISH_REASONS.get(result.finish_reason, result.finish_reason)


def _usage(results: Sequence[Any], n: int) -> Usage:
    """Each prompt counts once however many choices it has; every choice's completion counts."""
    prompt_tokens = sum(r.num_prompt_tokens for r in results[::n])
    completion_tokens = sum(r.num_completion_tokens for r in results)
    return Usage(
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        total_tokens=prompt_tokens + completion_tokens,
    )
