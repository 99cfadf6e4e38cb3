"""`StoryLibrary`: stories on disk, one folder each, indexed by SQLite."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from engine.errors import StoryloomError

if TYPE_CHECKING:
    from PIL.Image import Image

    from storyloom.workflow.draft import StoryDraft


class LibraryError(StoryloomError):
    """The library cannot do what was asked (unknown story, folder not writable, export target exists)."""


@dataclass(frozen=True)
class StorySummary:
    """One row of the library list."""

    id: str
    title: str
    idea: str
    created: str  # ISO 8601 UTC
    has_image: bool
    demo: bool
    folder: Path


class StoryLibrary:
    """``<root>/index.sqlite3`` + ``<root>/<id>/{story.json, story.md, image.png}``."""

    def __init__(self, root: str | Path) -> None:
        raise NotImplementedError

    def save(self, draft: StoryDraft) -> str:
        """Store ``draft`` (replacing the entry ``draft.story_id`` when it exists); returns the story id."""
        raise NotImplementedError

    def list(self, query: str | None = None) -> list[StorySummary]:
        """Newest first; ``query`` matches title or idea (case-insensitive substring)."""
        raise NotImplementedError

    def get(self, story_id: str) -> StoryDraft:
        raise NotImplementedError

    def delete(self, story_id: str) -> None:
        raise NotImplementedError

    def thumbnail(self, story_id: str, size: int = 256) -> Image | None:
        """A thumbnail (longest side ``size``) of the story's image, or None without an image."""
        raise NotImplementedError

    def rebuild_index(self) -> int:
        """Rebuild the index from the story folders; returns the number of stories found."""
        raise NotImplementedError

    def export(
        self, story_id: str, fmt: Literal["md", "html"], dest: str | Path, overwrite: bool = False
    ) -> Path:
        """Write the story as Markdown or a self-contained HTML page.

        ``dest`` is a folder (the file name comes from the sanitised title) or a file path. An existing file
        is refused with LibraryError unless ``overwrite``. Returns the written path.
        """
        raise NotImplementedError
