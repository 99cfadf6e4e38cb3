"""`Studio`: the one facade the GUI, the CLI and the API server use.

Importing this module loads no torch and no models: the engine is imported when `start()` loads the models.
All long work runs as `Job`s on worker threads; model work itself runs on the engine thread.
Callbacks (`on_event`, done callbacks) arrive on worker or engine threads: GUIs re-emit them as signals.
"""

from __future__ import annotations

import gc
import logging
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from adapters import AdapterStore
from engine.errors import InvalidRequestError, StoryloomError
from storyloom.library import StoryLibrary
from storyloom.workflow import CompareRow, Job, StoryDraft, StoryEvent, StoryOptions
from storyloom.workflow.compare import run_compare
from storyloom.workflow.draft import check_seed
from storyloom.workflow.job import describe_error

if TYPE_CHECKING:
    from storyloom.settings import Settings
    from storyloom.workflow.models import LoadedModels
    from storyloom.workflow.pipeline import StoryPipeline

log = logging.getLogger(__name__)

EventCallback = Callable[[StoryEvent], None]
AdapterState = Literal["disk", "ram", "gpu"]
LIBRARY_DIR = "library"
MAX_PARALLEL_JOBS = 4  # story jobs mostly wait on the engine; the engine batches their requests
_ENGINE_STATES: dict[str, AdapterState] = {"cpu": "ram", "gpu": "gpu"}

__all__ = [
    "AdapterRow",
    "CompareRow",
    "Job",
    "NotReadyError",
    "StoryDraft",
    "StoryEvent",
    "StoryOptions",
    "Studio",
    "StudioStatus",
]


class NotReadyError(StoryloomError):
    """The models are not loaded yet (call `Studio.start()` and wait for it), or loading failed."""


@dataclass(frozen=True)
class AdapterRow:
    """One adapter as the adapter manager shows it."""

    name: str
    role: str  # "story-writer", "sdxl-prompter", "custom", ...
    description: str
    ranks: tuple[int, ...]  # LoRA rank(s) found in the weights; empty when not installed
    target_modules: tuple[str, ...]
    size_bytes: int
    sha256: str  # of the weights file; "" when not installed
    state: AdapterState  # "disk": only on disk; "ram": loaded, CPU copy; "gpu": in a GPU slot
    enabled: bool
    builtin: bool
    installed: bool  # False for a built-in adapter whose weights are not installed
    path: Path | None = None
    warnings: tuple[str, ...] = ()  # e.g. trained for another model family (shown to the user)

    @property
    def rank(self) -> int | None:
        """The largest rank, or None when not installed."""
        return max(self.ranks) if self.ranks else None


@dataclass(frozen=True)
class StudioStatus:
    """What the status bar shows. Byte counts are 0 when unknown (e.g. on the CPU or before loading)."""

    ready: bool
    demo: bool
    loading: bool = False
    error: str | None = None  # why loading failed, one readable line
    device_name: str = ""
    vram_total_bytes: int = 0
    vram_used_bytes: int = 0
    llm_bytes: int = 0
    sdxl_bytes: int = 0
    llm_parked: bool = False  # the LLM waits in CPU RAM while SDXL draws ("swap llm while drawing")
    plan_name: str = ""
    plan_estimate_bytes: int = 0
    plan_notes: tuple[str, ...] = ()
    plan_override: str | None = None
    tokens_per_s: float = 0.0
    queued_requests: int = 0
    llm_model_id: str = ""
    sdxl_model_id: str = ""
    available_plans: tuple[str, ...] = field(default_factory=tuple)
    api_url: str | None = None  # where the local API listens, when it runs


class Studio:
    """Loads the models, runs story jobs, manages adapters and the library.

    ``engine_factory(settings, render=bool) -> LoadedModels`` replaces the real model loading (tests); by
    default the models named in the settings load, or the demo models when ``settings.use_demo_models`` is
    on or no model paths are configured.
    """

    def __init__(
        self, settings: Settings | None = None, *, engine_factory: Callable[..., LoadedModels] | None = None
    ) -> None:
        from storyloom.settings import Settings

        if settings is None:
            settings, problem = Settings.load_or_defaults()
            if problem is not None:
                log.warning("%s", problem)
        self.settings = settings
        self.library = StoryLibrary(settings.data_dir / LIBRARY_DIR)
        self.adapter_store = AdapterStore(settings.data_dir)
        self._engine_factory = engine_factory
        self._lock = threading.RLock()
        self._models: LoadedModels | None = None
        self._pipeline: StoryPipeline | None = None
        self._plan: Any | None = None
        self._model_bytes = (0, 0)  # (LLM, SDXL) bytes, measured once loaded
        self._start_future: Future[StudioStatus] | None = None
        self._load_error: str | None = None
        self._jobs: set[Job] = set()
        self._executor = ThreadPoolExecutor(max_workers=MAX_PARALLEL_JOBS, thread_name_prefix="storyloom-job")
        self._api: Any | None = None  # storyloom.api.ServerHandle while the local API runs
        self._closed = False

    # --- lifecycle --------------------------------------------------------------------------------------
    def start(self, *, render: bool = True) -> Future[StudioStatus]:
        """Load the LLM (and, with ``render``, the SDXL renderer) on a background thread.

        The future resolves to the status once ready, or raises the loading error (CheckpointError, ...).
        Calling start again while loading or ready returns the same future; after a failure it tries again.
        """
        with self._lock:
            self._check_open()
            current = self._start_future
            if current is not None and not (current.done() and current.exception() is not None):
                return current
            future: Future[StudioStatus] = Future()
            self._start_future, self._load_error = future, None
        threading.Thread(target=self._load, args=(future, render), name="storyloom-load", daemon=True).start()
        return future

    @property
    def is_ready(self) -> bool:
        return self._pipeline is not None and not self._closed

    @property
    def is_demo(self) -> bool:
        """True when the demo models are (or will be) used: their output is gibberish and abstract."""
        from storyloom.workflow.models import is_demo_output

        return is_demo_output(self.settings)

    @property
    def engine(self) -> Any:
        """The loaded LLM engine (for the API server's completions); raises NotReadyError before start."""
        return self._require_models().engine

    def close(self) -> None:
        """Cancel running jobs, wait for them to settle (the library is never half-written), free models."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            jobs = list(self._jobs)
        self.stop_api()
        for job in jobs:
            job.cancel()
        self._executor.shutdown(wait=True)
        models, self._models, self._pipeline = self._models, None, None
        if models is not None:
            models.engine.close()
            gc.unfreeze()  # the closed models may be collected again
        log.info("studio closed")

    def __enter__(self) -> Studio:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- local API --------------------------------------------------------------------------------------
    @property
    def api_url(self) -> str | None:
        api = self._api
        return api.url if api is not None else None

    def start_api(self) -> str:
        """Serve the local OpenAI-compatible API from the loaded engine, at the settings' host and port (and key);
        returns its URL. Refuses a non-loopback host without a key (storyloom.api.UnsafeBindError)."""
        from storyloom.api import create_app, start_in_thread

        with self._lock:
            if self._api is None:
                s = self.settings
                self._api = start_in_thread(create_app(self.engine, self, api_key=s.api_key), s.api_host, s.api_port)
            return self._api.url

    def stop_api(self) -> None:
        with self._lock:
            api, self._api = self._api, None
        if api is not None:
            api.stop()

    # --- stories ----------------------------------------------------------------------------------------
    def default_options(self) -> StoryOptions:
        """Options filled from the settings (the demo models draw small, quick images)."""
        image = self._run_settings().image
        return StoryOptions(width=image.width, height=image.height, steps=image.steps)

    def check_idea(self, idea: str) -> str:
        """The stripped idea; raises InvalidRequestError when it is empty or too long for the context."""
        if not isinstance(idea, str) or not idea.strip():
            raise InvalidRequestError("idea: must not be empty; describe the story you want in a sentence")
        return self._require_pipeline().check_idea(idea)

    def generate(self, idea: str, options: StoryOptions, on_event: EventCallback) -> Job:
        """The whole pipeline for ``idea``; the finished story is saved in the library (result: StoryDraft).

        Raises InvalidRequestError at once for a bad idea, NotReadyError before the models are loaded.
        """
        pipeline = self._current_pipeline()
        image = pipeline.settings.image
        draft = StoryDraft(
            idea=self.check_idea(idea),
            seed=options.seed,
            width=options.width or image.width,
            height=options.height or image.height,
            steps=options.steps or image.steps,
            demo=self.is_demo,
        )
        return self._submit(lambda job: self._save(pipeline.run(draft, options, job)), on_event)

    def new_story(self, draft: StoryDraft, on_event: EventCallback) -> Job:
        """Same concept: a new story and a new image prompt in one batch; a drawn image is redrawn from
        the new prompt with the same seed."""
        pipeline = self._current_pipeline()
        if not draft.concept.strip():
            raise InvalidRequestError("draft: it has no concept yet; generate a story first")
        base = draft.copy(demo=draft.demo or self.is_demo)
        render = base.image is not None and pipeline.renderer is not None
        options = StoryOptions()
        return self._submit(
            lambda job: self._save(pipeline.write_story_and_prompt(base, options, job, render=render)), on_event
        )

    def new_image(self, draft: StoryDraft, on_event: EventCallback, seed: int | None = None) -> Job:
        """Same prompt, a new image (``seed`` None picks a fresh random seed)."""
        check_seed(seed)
        return self._render_job(draft.copy(seed=seed, demo=draft.demo or self.is_demo), on_event)

    def rerender(self, draft: StoryDraft, prompt: str, negative: str, on_event: EventCallback) -> Job:
        """Draw again with an edited prompt and negative prompt (same seed as the draft)."""
        if not isinstance(prompt, str) or not prompt.strip():
            raise InvalidRequestError("prompt: must not be empty")
        edited = draft.copy(
            image_prompt=prompt.strip(), negative_prompt=(negative or "").strip(), demo=draft.demo or self.is_demo
        )
        edited.sources["prompt"] = "edited by you"
        return self._render_job(edited, on_event)

    def compare(
        self,
        prompt: str,
        adapters: list[str | None],
        on_event: EventCallback,
        sampling: dict[str, Any] | None = None,
    ) -> Job:
        """Run ``prompt`` through every adapter in ``adapters`` (None = base model) in ONE batch.

        ``sampling``: SamplingParams fields to override. Result: list[CompareRow] in the order given.
        """
        from engine import SamplingParams
        from engine.errors import AdapterNotFoundError

        engine = self._require_models().engine
        if not isinstance(prompt, str) or not prompt.strip():
            raise InvalidRequestError("prompt: must not be empty")
        if not adapters:
            raise InvalidRequestError("adapters: choose at least one (None stands for the base model)")
        known = engine.adapters.names()
        for name in adapters:
            if name is not None and name not in known:
                raise AdapterNotFoundError(name, known)
        defaults = self._run_settings().sampling["concept"].as_dict()
        try:
            params = SamplingParams(**{**defaults, **(sampling or {})})
        except TypeError as exc:  # an unknown field name
            raise InvalidRequestError(f"sampling: {exc}") from exc
        return self._submit(lambda job: run_compare(engine, prompt, list(adapters), params, job), on_event, "compare")

    # --- adapters ---------------------------------------------------------------------------------------
    def list_adapters(self) -> list[AdapterRow]:
        """Built-in adapters first, then imported ones; loaded adapters report the engine's view of them."""
        models = self._models if self.is_ready else None
        loaded = {info.name: info for info in models.engine.adapters.list()} if models is not None else {}
        rows = []
        for stored in self.adapter_store.list():
            info = loaded.get(stored.name)
            common = {
                "name": stored.name,
                "role": stored.role,
                "description": stored.description,
                "enabled": stored.enabled,
                "builtin": stored.builtin,
            }
            if info is not None:
                row = AdapterRow(
                    **common,
                    ranks=tuple(sorted(set(info.ranks.values()))),
                    target_modules=tuple(info.target_modules),
                    size_bytes=info.size_bytes,
                    sha256=info.sha256,
                    state=_ENGINE_STATES.get(info.state, "ram"),
                    installed=True,
                    path=Path(info.path),
                    warnings=tuple(info.warnings),
                )
            else:
                source = self._adapter_source(stored.name, models) if models is not None else None
                installed = stored.installed or source is not None
                row = AdapterRow(
                    **common,
                    ranks=stored.ranks,
                    target_modules=stored.target_modules,
                    size_bytes=stored.size_bytes,
                    sha256=self.adapter_store.sha256(stored.name),
                    state="disk",
                    installed=installed,
                    path=source or (stored.path if stored.installed else None),
                )
            rows.append(row)
        return rows

    def import_adapter(self, path: str | Path, name: str, role: str = "custom") -> AdapterRow:
        """Validate and import a PEFT adapter folder; raises AdapterError (all problems), imports nothing.

        The files are checked first; when the models are loaded the weights are also checked against the
        base model (shapes, modules, rank) and the adapter is loaded at once.
        """
        from engine.errors import AdapterError

        stored = self.adapter_store.import_adapter(Path(path), name, role)
        if self.is_ready:
            try:
                self._models.engine.adapters.load(name, stored.path)
            except AdapterError:
                self.adapter_store.remove(name)
                raise
        return self._adapter_row(name)

    def remove_adapter(self, name: str) -> None:
        """Unload and delete an imported adapter; built-in adapters cannot be removed (disable them instead)."""
        from engine.errors import AdapterError

        stored = self.adapter_store.get(name)
        if stored.builtin:
            raise AdapterError(name, ["it is a built-in adapter; disable it instead of removing it"])
        self._unload(name)
        self.adapter_store.remove(name)

    def set_adapter_enabled(self, name: str, enabled: bool) -> None:
        """A disabled adapter is unloaded and its role falls back to the base model (said plainly)."""
        self.adapter_store.set_enabled(name, enabled)
        if not self.is_ready:
            return
        if not enabled:
            self._unload(name)
            return
        path = self._adapter_source(name, self._models)
        if path is not None and name not in self._models.engine.adapters.names():
            self._models.engine.adapters.load(name, path)

    # --- status -----------------------------------------------------------------------------------------
    def status(self) -> StudioStatus:
        from engine.vram import PLAN_NAMES

        base = {
            "demo": self.is_demo,
            "plan_override": self.settings.vram_plan_override,
            "available_plans": tuple(PLAN_NAMES),
            "api_url": self.api_url,
        }
        models, plan = self._models, self._plan
        if models is None or self._closed:
            loading = self._start_future is not None and not self._start_future.done() and not self._closed
            return StudioStatus(ready=False, loading=loading, error=self._load_error, **base)
        engine, renderer = models.engine, models.renderer
        stats = engine.stats()
        device_name, vram_total, vram_used = _device_memory(engine.device)
        return StudioStatus(
            ready=True,
            device_name=device_name,
            vram_total_bytes=vram_total,
            vram_used_bytes=vram_used,
            llm_bytes=self._model_bytes[0],
            sdxl_bytes=self._model_bytes[1],
            llm_parked=engine.llm_parked,
            plan_name=plan.name if plan is not None else "",
            plan_estimate_bytes=plan.estimated_peak_bytes if plan is not None else 0,
            plan_notes=tuple(plan.notes) if plan is not None else (),
            tokens_per_s=stats.tokens_per_s,
            queued_requests=stats.num_waiting,
            llm_model_id=engine.model_id,
            sdxl_model_id=renderer.model_id if renderer is not None else "",
            **base,
        )

    def set_vram_override(self, plan_name: str | None) -> Future[None]:
        """Force a VRAM plan by name (None = automatic). Saved in the settings at once; loaded models move on
        the engine thread once the current render is done. Never blocks: the future says when it applied."""
        from engine.vram import PLAN_NAMES

        if plan_name is not None and plan_name not in PLAN_NAMES:
            raise InvalidRequestError(f"plan: unknown VRAM plan '{plan_name}'; choose one of {', '.join(PLAN_NAMES)}")
        self.settings.vram_plan_override = plan_name
        self.settings.save()
        models = self._models
        if models is None or models.renderer is None:
            applied: Future[None] = Future()
            applied.set_result(None)
            return applied
        return models.engine.run_on_engine_thread(lambda: self._apply_plan(models))

    # --- internals --------------------------------------------------------------------------------------
    def _load(self, future: Future[StudioStatus], render: bool) -> None:
        from storyloom.workflow.models import effective_settings, load_models
        from storyloom.workflow.pipeline import StoryPipeline

        try:
            models = (self._engine_factory or load_models)(self.settings, render=render)
            try:
                self._load_adapters(models)
                if models.renderer is not None:
                    self._apply_plan(models)
                pipeline = StoryPipeline(
                    models.engine,
                    models.renderer,
                    self.adapter_store,
                    self._plan,
                    settings=effective_settings(self.settings),
                )
            except BaseException:
                models.engine.close()
                raise
            with self._lock:
                if self._closed:
                    models.engine.close()
                    raise NotReadyError("the studio was closed while the models were loading")
                self._models, self._pipeline = models, pipeline
                # Fixed once loaded; status() is polled from GUI threads and must stay cheap.
                sdxl_bytes = models.renderer.footprint().weights_bytes if models.renderer is not None else 0
                self._model_bytes = (models.engine.footprint().total_bytes, sdxl_bytes)
        except BaseException as exc:
            self._load_error = describe_error(exc)
            log.error("loading the models failed: %s", self._load_error)
            future.set_exception(exc)
            return
        # The loaded libraries and models are a great many long-lived Python objects; a full garbage collection
        # walking them holds the GIL for about a second, which freezes the window and stalls API streams.
        gc.freeze()
        log.info("studio ready (%s)", "demo models" if self.is_demo else models.engine.model_id)
        future.set_result(self.status())

    def _load_adapters(self, models: LoadedModels) -> None:
        """Load every enabled adapter that has weights; one that does not fit the base is logged, not fatal."""
        from engine.errors import AdapterError

        for stored in self.adapter_store.list():
            path = self._adapter_source(stored.name, models)
            if not stored.enabled or path is None:
                continue
            try:
                models.engine.adapters.load(stored.name, path)
            except AdapterError as exc:
                log.warning("adapter '%s' was not loaded: %s", stored.name, describe_error(exc))

    def _adapter_source(self, name: str, models: LoadedModels) -> Path | None:
        """Where ``name``'s weights come from: the demo models' own, else the store's (None: not installed)."""
        if name in models.adapters:
            return models.adapters[name]
        stored = self.adapter_store.get(name)
        return stored.path if stored.installed else None

    def _unload(self, name: str) -> None:
        if self.is_ready and name in self._models.engine.adapters.names():
            self._models.engine.adapters.unload(name)

    def _adapter_row(self, name: str) -> AdapterRow:
        return next(row for row in self.list_adapters() if row.name == name)

    def _apply_plan(self, models: LoadedModels) -> None:
        from engine.vram import plan_vram, query_gpu_memory

        renderer = models.renderer
        gpu = query_gpu_memory(str(models.engine.device)) if models.engine.device.type == "cuda" else None
        plan = plan_vram(gpu, models.engine.footprint(), renderer.footprint(), self.settings.vram_plan_override)
        renderer.apply_plan(plan)
        self._plan = renderer.plan
        if self._pipeline is not None:
            self._pipeline.plan = self._plan

    def _run_settings(self) -> Settings:
        from storyloom.workflow.models import effective_settings

        return effective_settings(self.settings)

    def _check_open(self) -> None:
        if self._closed:
            raise NotReadyError("the studio is closed")

    def _require_models(self) -> LoadedModels:
        self._check_open()
        if self._models is None:
            reason = f"loading failed: {self._load_error}" if self._load_error else "call start() and wait for it"
            raise NotReadyError(f"the models are not loaded yet ({reason})")
        return self._models

    def _require_pipeline(self) -> StoryPipeline:
        self._require_models()
        assert self._pipeline is not None
        return self._pipeline

    def _current_pipeline(self) -> StoryPipeline:
        """The pipeline, reading the settings as they are now (the GUI edits the shared Settings object)."""
        pipeline = self._require_pipeline()
        pipeline.settings = self._run_settings()
        return pipeline

    def _render_job(self, draft: StoryDraft, on_event: EventCallback) -> Job:
        pipeline = self._current_pipeline()
        if pipeline.renderer is None:
            raise NotReadyError("no SDXL model is loaded (the studio was started without images)")
        if not draft.image_prompt.strip():
            raise InvalidRequestError("image_prompt: must not be empty")
        return self._submit(lambda job: self._save(pipeline.render(draft, job)), on_event)

    def _submit(self, work: Callable[[Job], Any], on_event: EventCallback, kind: str = "story") -> Job:
        job = Job(on_event, kind=kind)
        with self._lock:
            self._check_open()
            self._jobs.add(job)
            job.add_done_callback(self._forget)
            self._executor.submit(job.execute, work)
        return job

    def _forget(self, job: Job) -> None:
        with self._lock:
            self._jobs.discard(job)

    def _save(self, draft: StoryDraft) -> StoryDraft:
        """Stories go to the library (replacing their entry when they have one); bare images do not."""
        if draft.story.strip():
            self.library.save(draft)
        return draft


def _device_memory(device: Any) -> tuple[str, int, int]:
    """(name, total bytes, used bytes) of the engine's device; the CPU reports no VRAM."""
    if getattr(device, "type", "cpu") != "cuda":
        return "CPU", 0, 0
    import torch

    free, total = torch.cuda.mem_get_info(device)
    return torch.cuda.get_device_name(device), total, total - free
