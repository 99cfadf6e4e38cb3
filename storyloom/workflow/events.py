"""Events a story job reports while it runs: what step, what text, which model wrote it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, get_args

if TYPE_CHECKING:
    from PIL.Image import Image

    from storyloom.workflow.draft import StoryDraft

EventKind = Literal[
    "step_started",
    "text_delta",
    "step_finished",
    "image_progress",
    "image_done",
    "notice",
    "error",
    "finished",
]
Step = Literal["concept", "story", "prompt", "image", "run"]

EVENT_KINDS: tuple[str, ...] = get_args(EventKind)
STEPS: tuple[str, ...] = get_args(Step)

BASE_MODEL = "base model"


@dataclass(frozen=True)
class StoryEvent:
    """One thing that happened in a job.

    - ``step_started``: ``step`` begins; ``source`` names the model that writes it ("base model",
      "story-writer", "base model (story-writer weights not installed)", "SDXL").
    - ``text_delta``: new text for ``step`` (append it to that step's pane).
    - ``step_finished``: ``step`` is complete; ``text`` is its full, parsed text; ``draft`` the draft so far.
    - ``image_progress``: denoising step ``progress = (step, total)``; ``image`` is a preview or None.
    - ``image_done``: the final ``image``; ``draft`` carries it.
    - ``notice``: something the user should know (prompt trimmed to fit CLIP, adapter missing); not fatal.
    - ``error``: the job failed; ``text`` is one readable line. A ``finished`` event follows.
    - ``finished`` (step "run"): always the last event. ``text`` is "completed", "cancelled" or "failed";
      ``draft`` is the (possibly partial) draft; ``story_id`` is set when the story was saved.

    ``row`` numbers the rows of a compare job (index into its adapter list); None elsewhere.
    """

    kind: EventKind
    step: Step
    text: str = ""
    source: str = ""
    progress: tuple[int, int] | None = None
    image: Image | None = None
    draft: StoryDraft | None = None
    story_id: str | None = None
    row: int | None = None

    def __post_init__(self) -> None:
        if self.kind not in EVENT_KINDS:
            raise ValueError(f"kind: '{self.kind}' is not one of {', '.join(EVENT_KINDS)}")
        if self.step not in STEPS:
            raise ValueError(f"step: '{self.step}' is not one of {', '.join(STEPS)}")


def fallback_source(role_name: str) -> str:
    """The source label of a row that runs on the base model because ``role_name`` has no weights."""
    return f"{BASE_MODEL} ({role_name} weights not installed)"
