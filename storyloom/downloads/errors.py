"""Download errors a user sees: each names the file or model and the reason."""

from __future__ import annotations

from pathlib import Path

from engine.errors import StoryloomError

GB = 1000**3


class DownloadError(StoryloomError):
    """A model download failed; the message names the file and the reason."""


class DownloadCancelledError(DownloadError):
    """The user cancelled; the partial `.part` file is kept so the next run resumes."""


class DiskFullError(DownloadError):
    """Not enough free disk space, found up front or while writing."""

    def __init__(self, folder: Path, needed_bytes: int | None, free_bytes: int, *, while_writing: str = "") -> None:
        self.folder = folder
        self.needed_bytes = needed_bytes
        self.free_bytes = free_bytes
        if while_writing:
            reason = f"the disk filled up while writing {while_writing}"
        else:
            reason = f"the download needs {needed_bytes / GB:.1f} GB more"
        super().__init__(
            f"not enough disk space in {folder}: {reason}, {free_bytes / GB:.1f} GB free. Free some space "
            "or choose another folder; finished files and partial downloads are kept and resume."
        )


class ChecksumError(DownloadError):
    """A downloaded file does not match its published size or checksum; the bad file is deleted."""

    def __init__(self, name: str, what: str, expected: str, actual: str) -> None:
        self.name = name
        self.expected = expected
        self.actual = actual
        super().__init__(
            f"{name}: {what} mismatch (expected {expected}, got {actual}); the damaged download was deleted, "
            "run the download again."
        )


class AccessDeniedError(DownloadError):
    """The server refused access (HTTP 401/403): a gated model, a missing or invalid token."""

    def __init__(self, name: str, status: int, hint: str) -> None:
        self.name = name
        self.status = status
        super().__init__(f"{name}: access refused (HTTP {status}). {hint}".strip())
