"""The story library: one folder per story plus a SQLite index that can always be rebuilt."""

from __future__ import annotations

from storyloom.library.store import LibraryError, StoryLibrary, StorySummary

__all__ = ["LibraryError", "StoryLibrary", "StorySummary"]
