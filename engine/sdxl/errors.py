"""Renderer errors beyond engine.errors."""

from __future__ import annotations

from engine.errors import StoryloomError


class RenderOutOfMemoryError(StoryloomError):
    """The GPU ran out of memory even after the renderer dropped one plan level; the renderer stays usable."""
