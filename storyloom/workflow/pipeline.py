"""The two-step story pipeline: concept (base model) -> one batch [story-writer, sdxl-prompter] -> render."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import secrets
import threading
import time
from collections.abc import Mapping
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any

from adapters import AdapterManifest, AdapterStore
from engine import SamplingParams
from engine.errors import InvalidRequestError, RenderCancelledError, StoryloomError
from engine.sdxl import RenderParams
from engine.sdxl.tokens import MAX_PROMPT_TOKENS
from storyloom.settings import Settings
from storyloom.workflow.draft import MAX_SEED, StoryDraft, StoryOptions
from storyloom.workflow.events import BASE_MODEL, StoryEvent, fallback_source
from storyloom.workflow.job import Job, JobCancelled
from storyloom.workflow.parsing import fit_clip_prompt, parse_image_prompt, parse_story, printable
from storyloom.workflow.prompts import CONCEPT_PROMPT

if TYPE_CHECKING:
    from engine import Engine
    from engine.sdxl import SDXLRenderer
    from engine.vram import VramPlan

log = logging.getLogger(__name__)

STORY_ROLE = "story-writer"
PROMPT_ROLE = "sdxl-prompter"
MIN_ANSWER_TOKENS = 16
READER_JOIN_S = 30.0  # a cancelled row's reader drains within moments; never wait forever


class PipelineError(StoryloomError):
    """A story step could not finish (the model failed, or wrote nothing usable)."""


@dataclasses.dataclass(frozen=True)
class _RenderTask:
    """A render queued on the engine thread; ``cancel`` stops it even when the job itself goes on."""

    future: Future
    stop: threading.Event

    def cancel(self) -> None:
        self.stop.set()
        self.future.cancel()


@dataclasses.dataclass
class _Row:
    """One row of the story batch while it streams."""

    step: str  # "story" | "prompt"
    role: str
    adapter: str | None  # None: the role's weights are not loaded, the base model runs the role's prompt
    source: str
    handle: Any = None
    reader: threading.Thread | None = None


class StoryPipeline:
    """Runs the story steps on an engine (LLM) and a renderer (SDXL); every step can run alone.

    ``engine`` and ``renderer`` follow the contracts in docs/ARCHITECTURE.md; ``renderer`` may be None (no
    images). ``adapter_store`` supplies each role's prompts; ``plan`` is the VRAM plan (``plan.both_resident``
    lets drawing start while the story is still being written). ``settings`` gives the default sampling per
    step and the image defaults (guidance, scheduler, size, steps); None: the built-in defaults.
    Every step method takes a draft, returns an updated copy, and reports through ``job``.
    """

    def __init__(
        self,
        engine: Engine,
        renderer: SDXLRenderer | None,
        adapter_store: AdapterStore,
        plan: VramPlan | None = None,
        *,
        settings: Settings | None = None,
    ) -> None:
        self.engine = engine
        self.renderer = renderer
        self.adapter_store = adapter_store
        self.plan = plan
        self.settings = settings or Settings()

    # --- the steps --------------------------------------------------------------------------------------
    def run(self, draft: StoryDraft, options: StoryOptions, job: Job) -> StoryDraft:
        """The whole pipeline: concept, then story + prompt in one batch, then the image."""
        draft = self.write_concept(draft, options, job)
        if options.render_image and self.renderer is None:
            job.emit(StoryEvent("notice", "image", text="No SDXL model is loaded, so this story gets no picture."))
        render = options.render_image and self.renderer is not None
        return self.write_story_and_prompt(draft, options, job, render=render)

    def write_concept(self, draft: StoryDraft, options: StoryOptions, job: Job) -> StoryDraft:
        """Step 1: the base model expands ``draft.idea`` into a concept."""
        draft = draft.copy(idea=self.check_idea(draft.idea))
        started = time.perf_counter()
        messages = CONCEPT_PROMPT.messages(idea=draft.idea)
        sampling = self._sampling("concept", options, messages)
        job.emit(StoryEvent("step_started", "concept", source=BASE_MODEL))
        handle = self.engine.submit(messages, sampling, adapter=None)
        job.track(handle)
        for delta in handle:
            job.emit(StoryEvent("text_delta", "concept", text=delta, source=BASE_MODEL))
        text = printable(self._finished_text(handle, "concept", job))
        draft.concept = text
        draft.sources["concept"] = BASE_MODEL
        draft.sampling["concept"] = dataclasses.asdict(sampling)
        draft.model_ids["llm"] = self.engine.model_id
        draft.timings["concept"] = time.perf_counter() - started
        self._finish_step(job, draft, "concept", text, BASE_MODEL)
        return draft

    def write_story_and_prompt(
        self, draft: StoryDraft, options: StoryOptions, job: Job, *, render: bool = False
    ) -> StoryDraft:
        """Step 2: ONE batch of a story row and a prompt row; with ``render`` the image follows.

        When the VRAM plan keeps both models resident, drawing starts as soon as the prompt row is done,
        while the story row is still streaming.
        """
        if not draft.concept.strip():
            raise InvalidRequestError("concept: the draft has no concept yet; write the concept first")
        draft = draft.copy()
        started = time.perf_counter()
        rows = [self._row("story", STORY_ROLE, job), self._row("prompt", PROMPT_ROLE, job)]
        prompts = {row.role: self._role_prompt(row.role) for row in rows}
        messages = [prompts[row.role].messages(idea=draft.idea, concept=draft.concept) for row in rows]
        samplings = [
            self._sampling(row.step, options, msgs, prompts[row.role].sampling)
            for row, msgs in zip(rows, messages, strict=True)
        ]
        handles = self.engine.submit_batch(messages, samplings, [row.adapter for row in rows])
        for row, handle in zip(rows, handles, strict=True):
            row.handle = handle
            job.track(handle)
            job.emit(StoryEvent("step_started", row.step, source=row.source))
            row.reader = threading.Thread(target=_stream, args=(job, row), daemon=True, name=f"{row.step}-row")
            row.reader.start()
        draft.adapters_used = [(n, h) for n, h in draft.adapters_used if n not in (STORY_ROLE, PROMPT_ROLE)]
        for row, sampling in zip(rows, samplings, strict=True):
            draft.sampling[row.step] = dataclasses.asdict(sampling)
            draft.sources[row.step] = row.source
            if row.adapter is not None:
                draft.record_adapter(row.adapter, self._adapter_sha256(row.adapter))
        story_row, prompt_row = rows
        draft.model_ids["llm"] = self.engine.model_id

        pending_render: _RenderTask | None = None
        try:
            prompt_text = self._finished_text(prompt_row.handle, "prompt", job, prompt_row.reader)
            draft.image_prompt, draft.negative_prompt = parse_image_prompt(prompt_text)
            if not draft.image_prompt:
                raise PipelineError(f"prompt: {prompt_row.source} wrote no usable image prompt; try again")
            draft.image_prompt = self._fit_prompt(draft.image_prompt, job)
            draft.timings["prompt"] = time.perf_counter() - started
            self._finish_step(job, draft, "prompt", _prompt_text(draft), prompt_row.source)
            if render and self._both_resident():
                pending_render = self._start_render(draft.copy(), job)

            story_text = self._finished_text(story_row.handle, "story", job, story_row.reader)
            draft.title, draft.story = parse_story(story_text)
            draft.timings["story"] = time.perf_counter() - started
            self._finish_step(job, draft, "story", story_text.strip(), story_row.source)
        except BaseException:
            for row in rows:
                row.handle.cancel()
            for row in rows:
                row.reader.join(timeout=READER_JOIN_S)  # their last deltas land before the job says finished
            if pending_render is not None:
                pending_render.cancel()
            raise
        if pending_render is not None:
            return self._finish_render(draft, pending_render, job)
        if render:
            return self.render(draft, job)
        return draft

    def render(self, draft: StoryDraft, job: Job) -> StoryDraft:
        """Step 3: draw ``draft.image_prompt`` with ``draft.seed`` (None: a new random seed)."""
        if self.renderer is None:
            raise PipelineError("image: no SDXL model is loaded, so no image can be drawn")
        if not draft.image_prompt.strip():
            raise InvalidRequestError("image_prompt: must not be empty")
        draft = draft.copy(image_prompt=self._fit_prompt(draft.image_prompt.strip(), job))
        return self._finish_render(draft, self._start_render(draft, job), job)

    # --- checks -----------------------------------------------------------------------------------------
    def check_idea(self, idea: str) -> str:
        """The idea stripped; raises InvalidRequestError when empty or too long for the model's context."""
        idea = idea.strip() if isinstance(idea, str) else ""
        if not idea:
            raise InvalidRequestError("idea: must not be empty; describe the story you want in a sentence")
        limit = self.engine.max_seq_len - self.settings.sampling["concept"].max_tokens
        used = self.engine.count_tokens(CONCEPT_PROMPT.messages(idea=idea))
        if used > limit:
            room = limit - self.engine.count_tokens(CONCEPT_PROMPT.messages(idea=""))
            raise InvalidRequestError(
                f"idea: too long for the model's context of {self.engine.max_seq_len} tokens: it needs "
                f"{used} prompt tokens where {limit} fit; keep the idea under "
                f"about {max(room, 0)} tokens"
            )
        return idea

    # --- internals --------------------------------------------------------------------------------------
    def _row(self, step: str, role: str, job: Job) -> _Row:
        if self._adapter_loaded(role):
            return _Row(step, role, role, role)
        source = fallback_source(role)
        log.info("%s: no '%s' adapter is loaded; the base model runs the role's prompt", step, role)
        job.emit(
            StoryEvent(
                "notice",
                step,
                text=f"The {role} adapter's weights are not installed: the base model writes the {step} "
                f"with the {role} prompt.",
                source=source,
            )
        )
        return _Row(step, role, None, source)

    def _role_prompt(self, role: str) -> AdapterManifest:
        return self.adapter_store.manifests[role]

    def _adapter_loaded(self, name: str) -> bool:
        return name in self.engine.adapters.names()

    def _adapter_sha256(self, name: str) -> str:
        return self.engine.adapters.get(name).sha256

    def _sampling(
        self, step: str, options: StoryOptions, messages: list, preset: Mapping[str, Any] | None = None
    ) -> SamplingParams:
        """The role's preset, the settings' defaults, then the options' overrides; max_tokens clamped to what
        the context leaves."""
        overrides = options.sampling.get(step, {})
        fields: dict[str, Any] = {**(preset or {}), **self.settings.sampling[step].as_dict(), **overrides}
        if options.seed is not None and "seed" not in overrides:
            fields["seed"] = (options.seed + ("concept", "story", "prompt").index(step)) % (MAX_SEED + 1)
        room = self.engine.max_seq_len - self.engine.count_tokens(messages)
        if room < MIN_ANSWER_TOKENS:
            raise InvalidRequestError(
                f"{step}: the prompt fills the model's context of {self.engine.max_seq_len} tokens; use a shorter idea"
            )
        fields["max_tokens"] = min(int(fields.get("max_tokens", 256)), room)
        return SamplingParams(**fields)

    def _finished_text(self, handle: Any, step: str, job: Job, reader: threading.Thread | None = None) -> str:
        result = handle.result()
        if reader is not None:
            reader.join()
        if result.finish_reason == "cancelled" or job.cancelled:
            raise JobCancelled
        if result.finish_reason == "error":
            raise PipelineError(f"{step}: the model failed: {result.error}")
        text = result.text.strip()
        if not text:
            raise PipelineError(f"{step}: the model wrote nothing; try again or with another seed")
        return text

    def _finish_step(self, job: Job, draft: StoryDraft, step: str, text: str, source: str) -> None:
        job.keep_partial(draft.copy())
        job.emit(StoryEvent("step_finished", step, text=text, source=source, draft=draft.copy()))

    def _fit_prompt(self, prompt: str, job: Job) -> str:
        if self.renderer is None:
            return prompt
        fitted = fit_clip_prompt(prompt, self.renderer.tokens_used, MAX_PROMPT_TOKENS)
        if fitted != prompt:
            log.info("image prompt trimmed to %d CLIP tokens: %s", MAX_PROMPT_TOKENS, fitted)
            job.emit(
                StoryEvent(
                    "notice",
                    "prompt",
                    text=f"The image prompt was {self.renderer.tokens_used(prompt)} CLIP tokens; SDXL reads "
                    f"{MAX_PROMPT_TOKENS} (77 with its start and end markers), so only the first tags that fit "
                    f"are used: {fitted}",
                )
            )
        return fitted

    def _both_resident(self) -> bool:
        return bool(self.plan is not None and getattr(self.plan, "both_resident", False))

    def _start_render(self, draft: StoryDraft, job: Job) -> _RenderTask:
        if draft.seed is None:
            draft.seed = secrets.randbelow(MAX_SEED + 1)
        image = self.settings.image
        params = RenderParams(
            draft.image_prompt,
            negative_prompt=draft.negative_prompt,
            width=draft.width or image.width,
            height=draft.height or image.height,
            steps=draft.steps or image.steps,
            guidance=image.guidance,
            scheduler=image.scheduler,
            seed=draft.seed,
        )
        source = f"SDXL ({self.renderer.model_id})"
        job.emit(StoryEvent("step_started", "image", source=source))
        started = time.perf_counter()
        stop = threading.Event()

        def on_progress(p: Any) -> None:
            progress = (p.step, p.total)
            job.emit(StoryEvent("image_progress", "image", progress=progress, image=p.preview, source=source))

        def work() -> Any:
            # the plan that swaps the LLM out frees its GPU memory for the drawing; text generation waits
            swap = self.renderer.plan.llm_offload_while_drawing
            with self.engine.parked() if swap else contextlib.nullcontext():
                image = self.renderer.render(
                    params,
                    on_progress=on_progress,
                    should_cancel=lambda: job.cancelled or stop.is_set(),
                    between_steps=self.engine.step_between,
                )
            return image, time.perf_counter() - started, source

        task = _RenderTask(self.engine.run_on_engine_thread(work), stop)
        job.track(task)
        return task

    def _finish_render(self, draft: StoryDraft, task: _RenderTask, job: Job) -> StoryDraft:
        try:
            result, seconds, source = task.future.result()
        except RenderCancelledError as exc:
            raise JobCancelled from exc
        job.check_cancelled()
        draft.image = result.image
        draft.render_params = dict(result.params)
        draft.seed = int(result.params.get("seed", draft.seed))
        draft.width, draft.height = result.image.size
        draft.steps = result.params.get("steps", draft.steps)
        draft.sources["image"] = source
        draft.timings["image"] = seconds
        draft.model_ids["sdxl"] = self.renderer.model_id
        job.keep_partial(draft.copy())
        job.emit(StoryEvent("image_done", "image", image=draft.image, draft=draft.copy(), source=source))
        return draft


def _stream(job: Job, row: _Row) -> None:
    for delta in row.handle:
        job.emit(StoryEvent("text_delta", row.step, text=delta, source=row.source))


def _prompt_text(draft: StoryDraft) -> str:
    if not draft.negative_prompt:
        return draft.image_prompt
    return f"{draft.image_prompt}\nNegative: {draft.negative_prompt}"
