"""Typed, user-facing errors. Each names the thing at fault and the reason."""

from __future__ import annotations

# Weight formats that unpickle (and so can run code) when loaded; Storyloom refuses them everywhere.
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


class StoryloomError(Exception):
    """Base of every error Storyloom shows to a user."""


class InvalidRequestError(StoryloomError, ValueError):
    """A request (prompt, sampling, adapter choice, render parameters) is invalid; only it fails."""


class CheckpointError(StoryloomError):
    """A model checkpoint is missing files, is malformed, or cannot be used."""


class UnsafeCheckpointError(CheckpointError):
    """A checkpoint only offers pickle weights (.bin, .pt, .ckpt); Storyloom loads safetensors only."""


class AdapterError(StoryloomError):
    """An adapter cannot be loaded; `problems` lists every reason at once."""

    def __init__(self, name: str, problems: list[str]) -> None:
        self.name = name
        self.problems = list(problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"adapter '{name}' cannot be loaded:\n{lines}")


class AdapterNotFoundError(InvalidRequestError):
    """A request names an adapter that is not loaded."""

    def __init__(self, name: str, known: list[str]) -> None:
        self.name = name
        self.known = sorted(known)
        super().__init__(f"unknown adapter '{name}'; loaded adapters: {', '.join(self.known) or '(none)'}")


class QueueFullError(StoryloomError):
    """Too many requests are waiting; try again later."""


class EngineClosedError(StoryloomError):
    """The engine was closed; it accepts no more work."""


class RenderCancelledError(StoryloomError):
    """An image render was cancelled before it finished."""
