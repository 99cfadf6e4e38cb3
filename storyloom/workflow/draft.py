"""The story being made (`StoryDraft`) and the choices for making it (`StoryOptions`)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from engine.config import SamplingParams

if TYPE_CHECKING:
    from PIL.Image import Image

TEXT_STEPS: tuple[str, ...] = ("concept", "story", "prompt")
SAMPLING_KEYS: tuple[str, ...] = (
    "max_tokens",
    "temperature",
    "top_k",
    "top_p",
    "repetition_penalty",
    "seed",
)
MAX_SEED = 2**32 - 1


@dataclass
class StoryDraft:
    """Everything known about one story, from the idea to the picture.

    A job never mutates the draft it is given: it works on a copy and returns (and reports) that copy.
    ``story_id`` is set once the draft is saved in the library; saving a draft that has one replaces that
    library entry (clear it to save a copy instead).
    """

    idea: str
    concept: str = ""
    title: str = ""
    story: str = ""
    image_prompt: str = ""
    negative_prompt: str = ""
    seed: int | None = None
    width: int | None = None
    height: int | None = None
    steps: int | None = None
    image: Image | None = None
    # (adapter name, sha256 of its weights) for every adapter that really ran.
    adapters_used: list[tuple[str, str]] = field(default_factory=list)
    # "concept" / "story" / "prompt" / "image" -> who produced it ("base model", "story-writer", ...).
    sources: dict[str, str] = field(default_factory=dict)
    # "llm" -> LLM checkpoint id, "sdxl" -> SDXL checkpoint id.
    model_ids: dict[str, str] = field(default_factory=dict)
    # step -> the sampling settings used (SamplingParams fields as a dict).
    sampling: dict[str, dict[str, Any]] = field(default_factory=dict)
    # step -> seconds it took.
    timings: dict[str, float] = field(default_factory=dict)
    # The renderer's full record of the image (RenderResult.params): prompt, seed, steps, scheduler, ...
    render_params: dict[str, Any] = field(default_factory=dict)
    demo: bool = False
    story_id: str | None = None
    created: str | None = None  # ISO 8601 UTC, set by the library on first save

    def copy(self, **changes: Any) -> StoryDraft:
        """A copy with its own lists and dicts (the image object is shared: images are never mutated)."""
        fresh = {
            "adapters_used": list(self.adapters_used),
            "sources": dict(self.sources),
            "model_ids": dict(self.model_ids),
            "sampling": {k: dict(v) for k, v in self.sampling.items()},
            "timings": dict(self.timings),
            "render_params": dict(self.render_params),
        }
        fresh.update(changes)
        return dataclasses.replace(self, **fresh)

    def record_adapter(self, name: str, sha256: str) -> None:
        """Note that adapter ``name`` ran (once per name; a later run with new weights replaces the hash)."""
        self.adapters_used = [(n, h) for n, h in self.adapters_used if n != name] + [(name, sha256)]


@dataclass(frozen=True)
class StoryOptions:
    """How to make a story. ``None`` means "the settings default" (the demo models use small images).

    ``sampling`` overrides sampling per step, e.g. ``{"story": {"temperature": 0.7}}``; steps are "concept",
    "story", "prompt"; keys are SamplingParams fields (max_tokens, temperature, top_k, top_p,
    repetition_penalty, seed).
    """

    seed: int | None = None
    width: int | None = None
    height: int | None = None
    steps: int | None = None
    render_image: bool = True
    sampling: dict[str, dict[str, Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_seed(self.seed)
        for name in ("width", "height"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 64 or value % 8):
                raise ValueError(f"{name}: must be a multiple of 8 and >= 64, got {value!r}")
        if self.steps is not None and (not isinstance(self.steps, int) or self.steps < 1):
            raise ValueError(f"steps: must be an integer >= 1, got {self.steps!r}")
        for step, overrides in self.sampling.items():
            if step not in TEXT_STEPS:
                raise ValueError(f"sampling: unknown step '{step}'; use {', '.join(TEXT_STEPS)}")
            unknown = sorted(set(overrides) - set(SAMPLING_KEYS))
            if unknown:
                raise ValueError(
                    f"sampling['{step}']: unknown setting(s) {', '.join(unknown)}; use {', '.join(SAMPLING_KEYS)}"
                )
            try:
                SamplingParams(**overrides)
            except ValueError as exc:
                raise ValueError(f"sampling['{step}']: {exc}") from exc


def check_seed(seed: int | None) -> None:
    """Raise ValueError unless ``seed`` is None (random) or an integer in 0..MAX_SEED."""
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED):
        raise ValueError(f"seed: must be an integer in 0..{MAX_SEED}, got {seed!r}")
