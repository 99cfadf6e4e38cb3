"""`Studio`: the one facade the GUI, the CLI and the API server use.

Importing this module loads no torch and no models: the engine is imported when `start()` loads the models.
All long work runs as `Job`s on worker threads; model work itself runs on the engine thread.
Callbacks (`on_event`, done callbacks) arrive on worker or engine threads: GUIs re-emit them as signals.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from engine.errors import StoryloomError
from storyloom.library import StoryLibrary
from storyloom.workflow import CompareRow, Job, StoryDraft, StoryEvent, StoryOptions

if TYPE_CHECKING:
    from adapters import AdapterStore
    from storyloom.settings import Settings

log = logging.getLogger(__name__)

EventCallback = Callable[[StoryEvent], None]
AdapterState = Literal["disk", "ram", "gpu"]

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
    plan_name: str = ""
    plan_estimate_bytes: int = 0
    plan_notes: tuple[str, ...] = ()
    plan_override: str | None = None
    tokens_per_s: float = 0.0
    queued_requests: int = 0
    llm_model_id: str = ""
    sdxl_model_id: str = ""
    available_plans: tuple[str, ...] = field(default_factory=tuple)


class Studio:
    """Loads the models, runs story jobs, manages adapters and the library.

    ``engine_factory(settings) -> (engine, renderer)`` replaces the real model loading (tests); by default
    the models named in the settings load, or the demo models when ``settings.use_demo_models`` is on or no
    model paths are configured.
    """

    def __init__(
        self, settings: Settings | None = None, *, engine_factory: Callable[..., Any] | None = None
    ) -> None:
        raise NotImplementedError

    settings: Settings
    library: StoryLibrary
    adapter_store: AdapterStore

    # --- lifecycle --------------------------------------------------------------------------------------
    def start(self, *, render: bool = True) -> Future[StudioStatus]:
        """Load the LLM (and, with ``render``, the SDXL renderer) on a background thread.

        The future resolves to the status once ready, or raises the loading error (CheckpointError, ...).
        Calling start again while loading or ready returns the same future.
        """
        raise NotImplementedError

    @property
    def is_ready(self) -> bool:
        raise NotImplementedError

    @property
    def is_demo(self) -> bool:
        """True when the demo models are (or will be) used: their output is gibberish and abstract."""
        raise NotImplementedError

    def close(self) -> None:
        """Cancel running jobs, wait for them to settle (the library is never half-written), free models."""
        raise NotImplementedError

    def __enter__(self) -> Studio:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- stories ----------------------------------------------------------------------------------------
    def default_options(self) -> StoryOptions:
        """Options filled from the settings (and the demo models' small image size)."""
        raise NotImplementedError

    def check_idea(self, idea: str) -> str:
        """The stripped idea; raises InvalidRequestError when it is empty or too long for the context."""
        raise NotImplementedError

    def generate(self, idea: str, options: StoryOptions, on_event: EventCallback) -> Job:
        """The whole pipeline for ``idea``; the finished story is saved in the library (result: StoryDraft).

        Raises InvalidRequestError at once for a bad idea, NotReadyError before the models are loaded.
        """
        raise NotImplementedError

    def new_story(self, draft: StoryDraft, on_event: EventCallback) -> Job:
        """Same concept, a new story and a new image prompt (one batch); the image is kept."""
        raise NotImplementedError

    def new_image(self, draft: StoryDraft, on_event: EventCallback, seed: int | None = None) -> Job:
        """Same prompt, a new image (``seed`` None picks a fresh random seed)."""
        raise NotImplementedError

    def rerender(self, draft: StoryDraft, prompt: str, negative: str, on_event: EventCallback) -> Job:
        """Draw again with an edited prompt and negative prompt (same seed as the draft)."""
        raise NotImplementedError

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
        raise NotImplementedError

    # --- adapters ---------------------------------------------------------------------------------------
    def list_adapters(self) -> list[AdapterRow]:
        raise NotImplementedError

    def import_adapter(self, path: str | Path, name: str, role: str = "custom") -> AdapterRow:
        """Validate and import a PEFT adapter folder; raises AdapterError (all problems), imports nothing."""
        raise NotImplementedError

    def remove_adapter(self, name: str) -> None:
        """Unload and delete a user adapter; built-in adapters cannot be removed (disable them instead)."""
        raise NotImplementedError

    def set_adapter_enabled(self, name: str, enabled: bool) -> None:
        """A disabled adapter is unloaded and its role falls back to the base model."""
        raise NotImplementedError

    # --- status -----------------------------------------------------------------------------------------
    def status(self) -> StudioStatus:
        raise NotImplementedError

    def set_vram_override(self, plan_name: str | None) -> None:
        """Force a VRAM plan by name (None = automatic); saved in the settings, applied on the next start."""
        raise NotImplementedError
