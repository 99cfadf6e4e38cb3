"""Progress reports for downloads: bytes done/total per file and overall, and the current speed."""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass


@dataclass(frozen=True)
class DownloadProgress:
    file: str  # the file being fetched (relative path)
    file_bytes_done: int
    file_bytes_total: int | None
    bytes_done: int  # whole plan, including what earlier runs already fetched
    bytes_total: int
    speed_bps: float  # bytes per second over the last few seconds

    @property
    def fraction(self) -> float:
        return min(1.0, self.bytes_done / self.bytes_total) if self.bytes_total else 0.0

    @property
    def eta_s(self) -> float | None:
        if self.speed_bps <= 0:
            return None
        return max(0, self.bytes_total - self.bytes_done) / self.speed_bps


class SpeedMeter:
    """Bytes per second over a sliding window of recent samples."""

    def __init__(self, window_s: float = 3.0, clock=time.monotonic) -> None:
        self.window_s = window_s
        self._clock = clock
        self._samples: deque[tuple[float, int]] = deque()
        self._total = 0

    def add(self, num_bytes: int) -> float:
        """Record bytes just received; returns the current speed."""
        now = self._clock()
        self._total += num_bytes
        self._samples.append((now, self._total))
        while len(self._samples) > 2 and now - self._samples[0][0] > self.window_s:
            self._samples.popleft()
        first_t, first_total = self._samples[0]
        elapsed = now - first_t
        return (self._total - first_total) / elapsed if elapsed > 0 else 0.0
