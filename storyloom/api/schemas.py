"""Request and response bodies of the OpenAI-compatible endpoints (the subset Storyloom serves)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class RequestBody(BaseModel):
    """Unknown fields (``user``, ``metadata``, ...) are accepted and ignored, as OpenAI clients send them."""

    model_config = ConfigDict(extra="allow")


class StreamOptions(BaseModel):
    include_usage: bool = False


class SamplingFields(RequestBody):
    """Sampling fields shared by chat and text completions; ranges are checked by SamplingParams."""

    model: str
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    repetition_penalty: float | None = None
    max_tokens: int | None = None
    stop: str | list[str] | None = None
    seed: int | None = None
    n: int = Field(default=1, ge=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    # OpenAI fields that would change the answer in ways Storyloom cannot honour: refused, not ignored.
    logprobs: Any = None
    top_logprobs: Any = None
    logit_bias: Any = None
    tools: Any = None
    echo: Any = None
    suffix: Any = None

    @field_validator("logprobs", "top_logprobs", "logit_bias", "tools", "echo", "suffix")
    @classmethod
    def _refuse_unsupported(cls, value: Any) -> Any:
        if value not in (None, False, 0, [], {}, ""):
            raise ValueError("not supported by Storyloom")
        return value

    @property
    def include_usage(self) -> bool:
        return self.stream_options is not None and self.stream_options.include_usage

    @property
    def token_budget(self) -> int | None:
        """The completion length the client asked for, if any."""
        return self.max_tokens


class TextPart(BaseModel):
    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart] | None = None

    def as_engine_message(self) -> dict[str, str]:
        """The ``{"role", "content"}`` dict the engine's chat template takes."""
        text = "\n".join(p.text for p in self.content) if isinstance(self.content, list) else self.content or ""
        return {"role": "system" if self.role == "developer" else self.role, "content": text}


class ChatCompletionRequest(SamplingFields):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = None

    @property
    def token_budget(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens


class CompletionRequest(SamplingFields):
    prompt: str | list[str] | list[int] | list[list[int]]

    @model_validator(mode="after")
    def _prompt_not_empty(self) -> CompletionRequest:
        if isinstance(self.prompt, list) and not self.prompt:
            raise ValueError("prompt must not be an empty list")
        return self

    def prompts(self) -> list[str | list[int]]:
        """One engine prompt per entry: a string, a token list, or each of a list of either."""
        if isinstance(self.prompt, str):
            return [self.prompt]
        if isinstance(self.prompt[0], int):
            return [list(self.prompt)]  # type: ignore[arg-type]
        return list(self.prompt)  # type: ignore[arg-type]


class ImageRequest(RequestBody):
    prompt: str = Field(min_length=1)
    model: str | None = None
    n: int = Field(default=1, ge=1, le=8)
    size: str = Field(default="1024x1024", pattern=r"^\d{2,5}x\d{2,5}$")
    seed: int | None = Field(default=None, ge=0, le=2**32 - 1)
    response_format: Literal["b64_json"] = "b64_json"
    negative_prompt: str = ""
    steps: int | None = Field(default=None, ge=1)
    guidance: float | None = None

    @property
    def width_height(self) -> tuple[int, int]:
        width, height = self.size.split("x")
        return int(width), int(height)


class AdapterLoadRequest(RequestBody):
    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    path: str = Field(min_length=1)


class StoryRequest(RequestBody):
    idea: str = Field(min_length=1)
    seed: int | None = None
    width: int | None = None
    height: int | None = None
    steps: int | None = None
    render_image: bool = True
    sampling: dict[str, dict[str, Any]] = Field(default_factory=dict)


# --- responses ------------------------------------------------------------------------------------------


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class ChatChoice(BaseModel):
    index: int
    message: AssistantMessage
    finish_reason: str | None
    logprobs: None = None


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage


class ChatDelta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None


class ChatChunkChoice(BaseModel):
    index: int
    delta: ChatDelta
    finish_reason: str | None = None
    logprobs: None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChatChunkChoice]
    usage: Usage | None = None


class TextChoice(BaseModel):
    index: int
    text: str
    finish_reason: str | None = None
    logprobs: None = None


class Completion(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[TextChoice]
    usage: Usage | None = None


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str
    parent: str | None = None


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class ImageData(BaseModel):
    b64_json: str
    revised_prompt: str | None = None
    seed: int | None = None


class ImagesResponse(BaseModel):
    created: int
    data: list[ImageData]
