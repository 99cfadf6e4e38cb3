"""One file's transfer: into a `.part` file, resumed with HTTP Range, verified, renamed atomically."""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import shutil
import threading
from collections.abc import Callable, Mapping
from pathlib import Path

import httpx

from storyloom.downloads.errors import (
    AccessDeniedError,
    ChecksumError,
    DiskFullError,
    DownloadCancelledError,
    DownloadError,
)
from storyloom.downloads.plan import RemoteFile

logger = logging.getLogger(__name__)

DISK_FULL_ERRNOS = (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC))
HASH_BLOCK = 1 << 20


class TransientError(Exception):
    """A failure worth retrying from where the transfer stopped (5xx, 429, body ended early)."""


class Checksum:
    """Incremental hash of the bytes written so far, in the form the source published."""

    def __init__(self, remote: RemoteFile) -> None:
        self.name = remote.path
        if remote.sha256 is not None:
            self.kind, self.expected, self._hash = "sha256", remote.sha256, hashlib.sha256()
        elif remote.git_sha1 is not None and remote.size is not None:
            # A git blob id is the sha1 of "blob <size>\0" followed by the content.
            self.kind, self.expected = "git blob sha1", remote.git_sha1
            self._hash = hashlib.sha1(b"blob %d\0" % remote.size, usedforsecurity=False)
        else:
            self.kind, self.expected, self._hash = "", "", None

    def update(self, data: bytes) -> None:
        if self._hash is not None:
            self._hash.update(data)

    def verify(self) -> None:
        if self._hash is not None and self._hash.hexdigest() != self.expected:
            raise ChecksumError(self.name, self.kind, self.expected, self._hash.hexdigest())


class FileTransfer:
    """Fetches one RemoteFile to `final_path`; a partial `.part` file beside it survives for resume."""

    def __init__(
        self,
        client: httpx.Client,
        remote: RemoteFile,
        final_path: Path,
        *,
        headers: Mapping[str, str],
        access_hint: str,
        cancel: threading.Event,
        chunk_size: int,
    ) -> None:
        self.remote = remote
        self.final_path = final_path
        self.part_path = final_path.with_name(final_path.name + ".part")
        self.bytes_done = 0
        self._client = client
        self._headers = dict(headers)
        self._access_hint = access_hint
        self._cancel = cancel
        self._chunk_size = chunk_size
        self._checksum = Checksum(remote)

    def resume_from_disk(self) -> int:
        """Hash what an earlier run left in the `.part` file; returns the bytes already there."""
        if not self.part_path.exists():
            return 0
        if self.remote.size is not None and self.part_path.stat().st_size > self.remote.size:
            logger.warning("%s is larger than the remote file; starting it again", self.part_path)
            self._restart()
            return 0
        with open(self.part_path, "rb") as fh:
            while block := fh.read(HASH_BLOCK):
                self._check_cancel()
                self._checksum.update(block)
                self.bytes_done += len(block)
        logger.info("resuming %s at byte %d", self.remote.path, self.bytes_done)
        return self.bytes_done

    def run(self, on_bytes: Callable[[int], None], *, max_retries: int, retry_delay_s: float) -> None:
        """Download (resuming), verify size and checksum, then rename into place."""
        try:
            self._fetch(on_bytes, max_retries=max_retries, retry_delay_s=retry_delay_s)
            self._verify()
        except ChecksumError:
            self.part_path.unlink(missing_ok=True)
            raise
        os.replace(self.part_path, self.final_path)
        logger.info("downloaded %s (%d bytes)", self.final_path, self.bytes_done)

    def _fetch(self, on_bytes: Callable[[int], None], *, max_retries: int, retry_delay_s: float) -> None:
        failures = 0
        while self.remote.size is None or self.bytes_done < self.remote.size:
            self._check_cancel()
            done_before = self.bytes_done
            try:
                self._stream(on_bytes)
                break
            except (httpx.TransportError, TransientError) as exc:
                failures = 1 if self.bytes_done > done_before else failures + 1
                if failures > max_retries:
                    raise DownloadError(
                        f"{self.remote.path}: the connection failed {failures} times in a row ({exc}). Check "
                        f"the network and run the download again: it resumes at byte {self.bytes_done}."
                    ) from exc
                logger.warning("%s: %s; resuming at byte %d", self.remote.path, exc, self.bytes_done)
                self._cancel.wait(retry_delay_s * failures)  # a back-off that cancel cuts short

    def _stream(self, on_bytes: Callable[[int], None]) -> None:
        headers = dict(self._headers)
        if self.bytes_done:
            headers["Range"] = f"bytes={self.bytes_done}-"
        with self._client.stream("GET", self.remote.url, headers=headers) as response:
            self._check_status(response)
            if self.bytes_done and response.status_code != 206:
                logger.warning("%s: the server ignored the resume request; starting again", self.remote.path)
                self._restart()
            try:
                with open(self.part_path, "ab") as fh:
                    for chunk in response.iter_bytes(self._chunk_size):
                        self._check_cancel()
                        fh.write(chunk)
                        self._count(chunk)
                        on_bytes(len(chunk))
                    fh.flush()
                    os.fsync(fh.fileno())
            except OSError as exc:
                if exc.errno not in DISK_FULL_ERRNOS:
                    raise
                free = shutil.disk_usage(self.part_path.parent).free
                raise DiskFullError(self.part_path.parent, None, free, while_writing=self.remote.path) from exc
        if self.remote.size is not None and self.bytes_done < self.remote.size:
            raise TransientError(f"the response ended at byte {self.bytes_done} of {self.remote.size}")

    def _check_status(self, response: httpx.Response) -> None:
        status = response.status_code
        if status in (401, 403):
            raise AccessDeniedError(self.remote.path, status, self._access_hint)
        if status == 416:
            self._restart()
            raise TransientError("the server could not resume this file (HTTP 416)")
        if status == 429 or status >= 500:
            raise TransientError(f"HTTP {status} from the server")
        if status >= 400:
            raise DownloadError(f"{self.remote.path}: HTTP {status} for {self.remote.url}")

    def _count(self, chunk: bytes) -> None:
        self._checksum.update(chunk)
        self.bytes_done += len(chunk)
        if self.remote.size is not None and self.bytes_done > self.remote.size:
            raise ChecksumError(self.remote.path, "size", f"{self.remote.size} bytes", "more bytes than that")

    def _verify(self) -> None:
        if self.remote.size is not None and self.bytes_done != self.remote.size:
            raise ChecksumError(self.remote.path, "size", f"{self.remote.size} bytes", f"{self.bytes_done} bytes")
        self._checksum.verify()

    def _restart(self) -> None:
        self.part_path.unlink(missing_ok=True)
        self.bytes_done = 0
        self._checksum = Checksum(self.remote)

    def _check_cancel(self) -> None:
        if self._cancel.is_set():
            raise DownloadCancelledError(
                f"{self.remote.path}: download cancelled; {self.bytes_done} bytes kept in {self.part_path}, "
                "the next download resumes there."
            )
