"""The status bar: device, a VRAM bar (used / total, LLM vs SDXL), tokens/s, queued requests."""

from __future__ import annotations

from typing import TYPE_CHECKING

from PySide6.QtCore import QRectF, QSize, Qt
from PySide6.QtGui import QColor, QPainter, QPaintEvent
from PySide6.QtWidgets import QLabel, QStatusBar, QWidget

from app.formatting import format_bytes

if TYPE_CHECKING:
    from storyloom.studio import StudioStatus

LLM_COLOR = QColor("#6d5dfc")
SDXL_COLOR = QColor("#e0559f")
OTHER_COLOR = QColor("#a8abbd")
TRACK_COLOR = QColor("#e2e3ec")


class VramBar(QWidget):
    """A thin stacked bar: LLM bytes, SDXL bytes, other use, free — over the device's total."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.total = 0
        self.used = 0
        self.llm = 0
        self.sdxl = 0
        self.setMinimumWidth(140)

    def sizeHint(self) -> QSize:
        return QSize(180, 14)

    def set_usage(self, total: int, used: int, llm: int, sdxl: int) -> None:
        self.total, self.used, self.llm, self.sdxl = total, max(used, llm + sdxl), llm, sdxl
        self.setToolTip(self.describe())
        self.update()

    def describe(self) -> str:
        if self.total <= 0:
            return "No GPU memory to show (CPU or not loaded)"
        return (
            f"{format_bytes(self.used)} of {format_bytes(self.total)} used — "
            f"LLM {format_bytes(self.llm)}, SDXL {format_bytes(self.sdxl)}, "
            f"other {format_bytes(self.used - self.llm - self.sdxl)}"
        )

    def paintEvent(self, event: QPaintEvent) -> None:
        p = QPainter(self)
        p.setRenderHint(QPainter.RenderHint.Antialiasing)
        rect = QRectF(self.rect()).adjusted(1, 3, -1, -3)
        p.setPen(Qt.PenStyle.NoPen)
        p.setBrush(TRACK_COLOR)
        p.drawRoundedRect(rect, 4, 4)
        if self.total > 0:
            x = rect.left()
            for num, color in (
                (self.llm, LLM_COLOR),
                (self.sdxl, SDXL_COLOR),
                (self.used - self.llm - self.sdxl, OTHER_COLOR),
            ):
                width = rect.width() * min(1.0, num / self.total)
                width = min(width, rect.right() - x)
                if width > 0:
                    p.setBrush(color)
                    p.drawRect(QRectF(x, rect.top(), width, rect.height()))
                    x += width
        p.end()


class StudioStatusBar(QStatusBar):
    """Shows one StudioStatus; the main window polls `Studio.status()` and calls `show_status`."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.state_label = QLabel("Starting…")
        self.device_label = QLabel("")
        self.vram_bar = VramBar()
        self.vram_label = QLabel("")
        self.speed_label = QLabel("")
        self.queue_label = QLabel("")
        self.addWidget(self.state_label, 1)
        for widget in (self.device_label, self.vram_bar, self.vram_label, self.speed_label, self.queue_label):
            self.addPermanentWidget(widget)

    def show_status(self, status: StudioStatus) -> None:
        if status.error:
            state = f"Models failed to load: {status.error}"
        elif status.loading:
            state = "Loading models…"
        elif status.ready:
            models = " + ".join(m for m in (status.llm_model_id, status.sdxl_model_id) if m)
            state = ("Demo models" if status.demo else "Ready") + (f" — {models}" if models else "")
            if status.api_url:
                state += f" · API {status.api_url}"
            if status.llm_parked:
                state += " · the LLM waits in RAM while the picture is drawn"
        else:
            state = "Not loaded"
        self.state_label.setText(state)
        self.state_label.setToolTip(state)
        self.device_label.setText(status.device_name or "—")
        llm_on_gpu = 0 if status.llm_parked else status.llm_bytes
        self.vram_bar.set_usage(status.vram_total_bytes, status.vram_used_bytes, llm_on_gpu, status.sdxl_bytes)
        if status.vram_total_bytes > 0:
            self.vram_label.setText(f"{format_bytes(status.vram_used_bytes)} / {format_bytes(status.vram_total_bytes)}")
        else:
            self.vram_label.setText(f"LLM {format_bytes(status.llm_bytes)} · SDXL {format_bytes(status.sdxl_bytes)}")
        self.vram_label.setToolTip(self.vram_bar.describe())
        self.speed_label.setText(f"{status.tokens_per_s:.1f} tok/s")
        self.queue_label.setText(f"{status.queued_requests} queued")
