"""Small text formatters shared by views and item models."""

from __future__ import annotations


def format_bytes(num: int) -> str:
    if num < 1024**2:
        return f"{num / 1024:.0f} KiB"
    if num < 1024**3:
        return f"{num / 1024**2:.0f} MiB"
    return f"{num / 1024**3:.1f} GiB"
