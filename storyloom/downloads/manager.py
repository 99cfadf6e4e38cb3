"""The download manager: size up front, free-space check, progress, resume, checksums, cancel."""

from __future__ import annotations

import logging
import shutil
import threading
from collections.abc import Callable, Mapping
from functools import partial
from pathlib import Path

import httpx

from storyloom.downloads.errors import AccessDeniedError, DiskFullError, DownloadError
from storyloom.downloads.plan import DownloadPlan, RemoteFile
from storyloom.downloads.progress import DownloadProgress, SpeedMeter
from storyloom.downloads.transfer import FileTransfer

logger = logging.getLogger(__name__)

ProgressCallback = Callable[[DownloadProgress], None]


class DownloadManager:
    """Fetches a DownloadPlan into a folder. Reusable; close() it (or use `with`) when done.

    `cancel` (a threading.Event) may be set from any thread; the `.part` files are kept and the next
    `download` of the same plan resumes them. Finished files whose size matches are not fetched again.
    """

    def __init__(
        self,
        client: httpx.Client | None = None,
        *,
        chunk_size: int = 1 << 20,
        max_retries: int = 5,
        retry_delay_s: float = 1.0,
        space_margin_bytes: int = 256 * 1024**2,
    ) -> None:
        if chunk_size < 1 or max_retries < 0 or retry_delay_s < 0 or space_margin_bytes < 0:
            raise ValueError(
                f"invalid DownloadManager settings: chunk_size={chunk_size}, max_retries={max_retries}, "
                f"retry_delay_s={retry_delay_s}, space_margin_bytes={space_margin_bytes}"
            )
        self._client = client or httpx.Client(follow_redirects=True, timeout=httpx.Timeout(30.0, connect=15.0))
        self._owns_client = client is None
        self.chunk_size = chunk_size
        self.max_retries = max_retries
        self.retry_delay_s = retry_delay_s
        self.space_margin_bytes = space_margin_bytes

    def close(self) -> None:
        if self._owns_client:
            self._client.close()

    def __enter__(self) -> DownloadManager:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def probe(self, url: str, headers: Mapping[str, str] | None = None) -> int | None:
        """The size of `url` in bytes from a HEAD request, or None when the server does not say."""
        try:
            response = self._client.head(url, headers=dict(headers or {}))
        except httpx.HTTPError as exc:
            raise DownloadError(f"cannot reach {url}: {exc}") from exc
        if response.status_code in (401, 403):
            raise AccessDeniedError(url, response.status_code, "")
        if response.status_code >= 400:
            raise DownloadError(f"{url}: HTTP {response.status_code}")
        length = response.headers.get("content-length")
        return int(length) if length and length.isdigit() else None

    def plan_urls(self, name: str, urls: Mapping[str, str], headers: Mapping[str, str] | None = None) -> DownloadPlan:
        """A plan for plain URLs ({relative path: url}); sizes come from HEAD requests."""
        files = tuple(RemoteFile(path, url, self.probe(url, headers)) for path, url in urls.items())
        return DownloadPlan(name, files, headers=dict(headers or {}))

    def missing_bytes(self, plan: DownloadPlan, dest: Path) -> int:
        """Bytes still to fetch: known sizes minus finished files and partial downloads."""
        missing = 0
        for remote in plan.files:
            final = dest / remote.path
            if remote.size is None or self._is_finished(remote, final):
                continue
            part = final.with_name(final.name + ".part")
            missing += remote.size - min(remote.size, part.stat().st_size if part.exists() else 0)
        return missing

    def check_space(self, plan: DownloadPlan, dest: Path) -> None:
        """Raise DiskFullError when `dest`'s disk lacks room for what is still missing."""
        needed = self.missing_bytes(plan, dest)
        probe = dest.absolute()
        while not probe.exists() and probe != probe.parent:
            probe = probe.parent
        free = shutil.disk_usage(probe).free
        if needed and free < needed + self.space_margin_bytes:
            raise DiskFullError(dest, needed, free)

    def download(
        self,
        plan: DownloadPlan,
        dest: Path,
        on_progress: ProgressCallback | None = None,
        cancel: threading.Event | None = None,
    ) -> list[Path]:
        """Fetch every file of `plan` under `dest`; returns the final paths in plan order."""
        self.check_space(plan, dest)
        cancel = cancel or threading.Event()
        finished = [r for r in plan.files if self._is_finished(r, dest / r.path)]
        reporter = _ProgressReporter(on_progress, plan.total_bytes, sum(r.size or 0 for r in finished))
        for remote in plan.files:
            if remote in finished:
                continue
            final = dest / remote.path
            final.parent.mkdir(parents=True, exist_ok=True)
            transfer = FileTransfer(
                self._client,
                remote,
                final,
                headers=plan.headers,
                access_hint=plan.access_hint,
                cancel=cancel,
                chunk_size=self.chunk_size,
            )
            transfer.resume_from_disk()
            transfer.run(
                partial(reporter.report, transfer),
                max_retries=self.max_retries,
                retry_delay_s=self.retry_delay_s,
            )
            reporter.finished_bytes += transfer.bytes_done
        return [dest / r.path for r in plan.files]

    @staticmethod
    def _is_finished(remote: RemoteFile, final: Path) -> bool:
        return final.is_file() and remote.size is not None and final.stat().st_size == remote.size


class _ProgressReporter:
    """Turns per-chunk byte counts into DownloadProgress reports for the whole plan."""

    def __init__(self, callback: ProgressCallback | None, total_bytes: int, finished_bytes: int) -> None:
        self.callback = callback
        self.total_bytes = total_bytes
        self.finished_bytes = finished_bytes
        self._meter = SpeedMeter()

    def report(self, transfer: FileTransfer, num_bytes: int) -> None:
        speed = self._meter.add(num_bytes)
        if self.callback is None:
            return
        self.callback(
            DownloadProgress(
                file=transfer.remote.path,
                file_bytes_done=transfer.bytes_done,
                file_bytes_total=transfer.remote.size,
                bytes_done=self.finished_bytes + transfer.bytes_done,
                bytes_total=self.total_bytes,
                speed_bps=speed,
            )
        )
