"""Story workflow: drafts, events, jobs, the two-step pipeline and the compare run."""

from __future__ import annotations

from typing import TYPE_CHECKING

from storyloom.workflow.compare import CompareRow
from storyloom.workflow.draft import StoryDraft, StoryOptions
from storyloom.workflow.events import BASE_MODEL, StoryEvent
from storyloom.workflow.job import Job

if TYPE_CHECKING:
    from storyloom.workflow.pipeline import StoryPipeline

__all__ = ["BASE_MODEL", "CompareRow", "Job", "StoryDraft", "StoryEvent", "StoryOptions", "StoryPipeline"]


def __getattr__(name: str) -> object:
    # The pipeline pulls in the engine (torch); load it only when asked for.
    if name == "StoryPipeline":
        from storyloom.workflow.pipeline import StoryPipeline

        return StoryPipeline
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
