"""What to download: files with their sizes and checksums, listed before anything starts."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import PurePosixPath

from storyloom.downloads.errors import GB, DownloadError

# Weights come as safetensors only; configs and tokenizer files are plain data. Pickle formats
# (.bin, .pt, .pth, .ckpt, .pkl) can run code when loaded and are never downloaded.
SAFE_SUFFIXES = (".safetensors", ".json", ".txt", ".model", ".tiktoken")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_SHA1 = re.compile(r"[0-9a-f]{40}")


def is_safe_model_file(path: str) -> bool:
    return path.lower().endswith(SAFE_SUFFIXES)


@dataclass(frozen=True)
class RemoteFile:
    """One file to fetch: where it goes (relative POSIX path), its URL, size and checksum when known."""

    path: str
    url: str
    size: int | None
    sha256: str | None = None
    git_sha1: str | None = None  # git blob id: the hub's checksum for small files not stored in LFS

    def __post_init__(self) -> None:
        parts = PurePosixPath(self.path).parts
        if not parts or self.path.startswith("/") or ".." in parts or "\\" in self.path:
            raise DownloadError(f"unsafe file path '{self.path}': must be relative, without '..'")
        if not is_safe_model_file(self.path):
            raise DownloadError(
                f"{self.path}: refused, only safetensors weights, configs and tokenizer files are downloaded "
                "(pickle formats like .bin/.pt/.ckpt can run code)"
            )
        if self.size is not None and self.size < 0:
            raise DownloadError(f"{self.path}: size must be >= 0, got {self.size}")
        if self.sha256 is not None and not _SHA256.fullmatch(self.sha256):
            raise DownloadError(f"{self.path}: sha256 must be 64 lowercase hex digits, got '{self.sha256}'")
        if self.git_sha1 is not None and not _SHA1.fullmatch(self.git_sha1):
            raise DownloadError(f"{self.path}: git blob id must be 40 lowercase hex digits, got '{self.git_sha1}'")


@dataclass(frozen=True)
class DownloadPlan:
    """A named set of files; `headers` (e.g. a token) go with every request and stay out of repr."""

    name: str
    files: tuple[RemoteFile, ...]
    headers: Mapping[str, str] = field(default_factory=dict, repr=False)
    access_hint: str = ""  # shown when the server answers 401/403

    def __post_init__(self) -> None:
        if not self.files:
            raise DownloadError(f"{self.name}: nothing to download")
        paths = [f.path for f in self.files]
        duplicates = sorted({p for p in paths if paths.count(p) > 1})
        if duplicates:
            raise DownloadError(f"{self.name}: files listed twice: {', '.join(duplicates)}")

    @property
    def total_bytes(self) -> int:
        """Sum of the known sizes."""
        return sum(f.size or 0 for f in self.files)

    def describe(self) -> str:
        """A few lines for the user: the files and the total size, before starting."""
        lines = [f"{self.name}: {len(self.files)} files, {self.total_bytes / GB:.2f} GB"]
        for f in self.files:
            size = "unknown size" if f.size is None else f"{f.size / GB:.3f} GB"
            lines.append(f"  {f.path} ({size})")
        return "\n".join(lines)
