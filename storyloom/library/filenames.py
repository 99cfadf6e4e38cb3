"""File names made from story titles: no path tricks, no reserved names, no control characters."""

from __future__ import annotations

import re
import unicodedata

MAX_NAME_CHARS = 80
FALLBACK_NAME = "story"
_WINDOWS_RESERVED = {"CON", "PRN", "AUX", "NUL", "CONIN$", "CONOUT$"} | {
    f"{dev}{n}" for dev in ("COM", "LPT") for n in (*"123456789", "¹", "²", "³")
}
_FORBIDDEN = re.compile(r'[<>:"/\\|?*]')


def safe_filename(title: str, max_chars: int = MAX_NAME_CHARS) -> str:
    """A file-name stem from ``title`` that is safe on Windows, macOS and Linux.

    Path separators and characters Windows forbids become spaces, control characters go, whitespace collapses,
    leading/trailing dots and spaces go (so no "..", no hidden files), reserved device names (CON, NUL, COM1,
    ...) get an underscore, and the length is capped. Never empty.
    """
    text = unicodedata.normalize("NFKC", title)
    text = "".join(" " if unicodedata.category(ch).startswith("C") else ch for ch in text)
    text = _FORBIDDEN.sub(" ", text)
    text = " ".join(text.split())
    text = text[:max_chars].strip(" .")
    if not text:
        return FALLBACK_NAME
    head, dot, rest = text.partition(".")
    if head.strip().upper() in _WINDOWS_RESERVED:
        text = f"{head.rstrip()}_{dot}{rest}"
    return text
