"""The two-step story pipeline: concept (base model) -> one batch [story-writer, sdxl-prompter] -> render."""

from __future__ import annotations

import logging
from typing import Any

from storyloom.workflow.draft import StoryDraft, StoryOptions
from storyloom.workflow.job import Job

log = logging.getLogger(__name__)

STORY_ROLE = "story-writer"
PROMPT_ROLE = "sdxl-prompter"


class StoryPipeline:
    """Runs the story steps on an engine (LLM) and a renderer (SDXL); every step can run alone.

    ``engine`` and ``renderer`` follow the contracts in docs/ARCHITECTURE.md; ``renderer`` may be None (no
    images). ``adapter_store`` supplies each role's prompts and default sampling; ``plan`` is the VRAM plan
    (``plan.both_resident`` lets drawing start while the story is still being written).
    Every step method takes a draft, returns an updated copy, and reports through ``job``.
    """

    def __init__(
        self, engine: Any, renderer: Any | None, adapter_store: Any, plan: Any | None = None
    ) -> None:
        self.engine = engine
        self.renderer = renderer
        self.adapter_store = adapter_store
        self.plan = plan

    def run(self, draft: StoryDraft, options: StoryOptions, job: Job) -> StoryDraft:
        """The whole pipeline: concept, then story + prompt in one batch, then the image."""
        raise NotImplementedError

    def write_concept(self, draft: StoryDraft, options: StoryOptions, job: Job) -> StoryDraft:
        """Step 1: the base model expands ``draft.idea`` into a concept."""
        raise NotImplementedError

    def write_story_and_prompt(
        self, draft: StoryDraft, options: StoryOptions, job: Job, *, render: bool = False
    ) -> StoryDraft:
        """Step 2: one batch of a story row and a prompt row; with ``render`` the image follows."""
        raise NotImplementedError

    def render(self, draft: StoryDraft, options: StoryOptions, job: Job) -> StoryDraft:
        """Step 3: draw ``draft.image_prompt`` on the engine thread (seed: options, draft, or new)."""
        raise NotImplementedError

    def check_idea(self, idea: str) -> str:
        """The idea stripped; raises InvalidRequestError when empty or too long for the model's context."""
        raise NotImplementedError
