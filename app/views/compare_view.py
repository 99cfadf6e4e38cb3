"""Compare: one prompt through several adapters and the base model in ONE batch, side by side."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QImage
from PySide6.QtWidgets import (
    QDoubleSpinBox,
    QHBoxLayout,
    QLabel,
    QListWidget,
    QListWidgetItem,
    QPlainTextEdit,
    QPushButton,
    QSpinBox,
    QSplitter,
    QVBoxLayout,
    QWidget,
)

from app.views.messages import InlineMessage
from app.views.stream_pane import StreamPane
from app.workers import JobRelay, StudioClient
from storyloom.workflow import BASE_MODEL

if TYPE_CHECKING:
    from storyloom.studio import AdapterRow, CompareRow, StoryEvent

log = logging.getLogger(__name__)


class CompareView(QWidget):
    """Pick adapters (and/or the base model), run once, read the rows side by side with tokens/s."""

    finished = Signal(str)  # "completed" | "cancelled" | "failed"

    def __init__(self, client: StudioClient, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.client = client
        self.relay: JobRelay | None = None
        self.rows: list[CompareRow] = []
        self._ready = False
        self.prompt_edit = QPlainTextEdit()
        self.prompt_edit.setPlaceholderText("One prompt for every chosen adapter")
        self.prompt_edit.setFixedHeight(70)
        self.prompt_edit.textChanged.connect(self._update_buttons)
        self.choice_list = QListWidget()
        self.choice_list.setMaximumHeight(110)
        self.choice_list.itemChanged.connect(self._update_buttons)
        self.max_tokens = QSpinBox()
        self.max_tokens.setRange(1, 4096)
        self.max_tokens.setValue(128)
        self.temperature = QDoubleSpinBox()
        self.temperature.setRange(0.0, 2.0)
        self.temperature.setSingleStep(0.1)
        self.temperature.setValue(0.8)
        self.run_button = QPushButton("Compare", objectName="primary")
        self.stop_button = QPushButton("Stop")
        self.run_button.clicked.connect(self.run)
        self.stop_button.clicked.connect(self.stop)
        self.message = InlineMessage()
        self.results = QSplitter(Qt.Orientation.Horizontal)
        self.results.setChildrenCollapsible(False)
        self.panes: list[StreamPane] = []
        self.speed_labels: list[QLabel] = []

        options = QHBoxLayout()
        options.addWidget(QLabel("Max tokens"))
        options.addWidget(self.max_tokens)
        options.addWidget(QLabel("Temperature"))
        options.addWidget(self.temperature)
        options.addStretch(1)
        options.addWidget(self.run_button)
        options.addWidget(self.stop_button)
        top = QHBoxLayout()
        top.addWidget(self.prompt_edit, 3)
        top.addWidget(self.choice_list, 2)
        layout = QVBoxLayout(self)
        layout.addLayout(top)
        layout.addLayout(options)
        layout.addWidget(self.message)
        layout.addWidget(self.results, 1)
        self.set_adapters([])

    # --- choices -----------------------------------------------------------------------------------------
    def set_adapters(self, rows: list[AdapterRow]) -> None:
        """List the base model and every installed, enabled adapter; keep the user's ticks."""
        ticked = set(self.chosen()) if self.choice_list.count() else {None}
        self.choice_list.blockSignals(True)
        self.choice_list.clear()
        choices: list[str | None] = [None] + [r.name for r in rows if r.installed and r.enabled]
        for name in choices:
            item = QListWidgetItem(BASE_MODEL if name is None else name)
            item.setData(Qt.ItemDataRole.UserRole, name)
            item.setFlags(item.flags() | Qt.ItemFlag.ItemIsUserCheckable)
            item.setCheckState(Qt.CheckState.Checked if name in ticked else Qt.CheckState.Unchecked)
            self.choice_list.addItem(item)
        self.choice_list.blockSignals(False)
        self._update_buttons()

    def set_checked(self, names: list[str | None]) -> None:
        for i in range(self.choice_list.count()):
            item = self.choice_list.item(i)
            name = item.data(Qt.ItemDataRole.UserRole)
            item.setCheckState(Qt.CheckState.Checked if name in names else Qt.CheckState.Unchecked)

    def chosen(self) -> list[str | None]:
        return [
            self.choice_list.item(i).data(Qt.ItemDataRole.UserRole)
            for i in range(self.choice_list.count())
            if self.choice_list.item(i).checkState() == Qt.CheckState.Checked
        ]

    def set_ready(self, ready: bool) -> None:
        self._ready = ready
        self._update_buttons()

    def _update_buttons(self, *_: object) -> None:
        busy = self.relay is not None
        ok = self._ready and bool(self.prompt_edit.toPlainText().strip()) and bool(self.chosen())
        self.run_button.setEnabled(ok and not busy)
        self.stop_button.setEnabled(busy)

    # --- run ---------------------------------------------------------------------------------------------
    def run(self) -> None:
        prompt = self.prompt_edit.toPlainText()
        adapters = self.chosen()
        sampling = {"max_tokens": self.max_tokens.value(), "temperature": self.temperature.value()}
        self.message.clear_message()
        self._make_panes([BASE_MODEL if a is None else a for a in adapters])
        self.rows = []
        try:
            self.relay = self.client.run_job(
                lambda on_event: self.client.studio.compare(prompt, adapters, on_event, sampling),
                self._on_event,
                self._on_finished,
            )
        except Exception as exc:
            self.message.show_error(str(exc))
            return
        self._update_buttons()

    def stop(self) -> None:
        if self.relay is not None:
            self.relay.cancel()

    def _make_panes(self, labels: list[str]) -> None:
        for pane in self.panes:
            pane.parentWidget().deleteLater()
        self.panes, self.speed_labels = [], []
        for label in labels:
            box = QWidget()
            pane = StreamPane(label)
            pane.set_source(label, "base" if label == BASE_MODEL else "adapter")
            speed = QLabel("waiting…", objectName="hint")
            column = QVBoxLayout(box)
            column.setContentsMargins(4, 0, 4, 0)
            column.addWidget(pane, 1)
            column.addWidget(speed)
            self.results.addWidget(box)
            self.panes.append(pane)
            self.speed_labels.append(speed)

    def _on_event(self, event: StoryEvent, _image: QImage | None) -> None:
        if event.row is None or not 0 <= event.row < len(self.panes):
            if event.kind == "error":
                self.message.show_error(event.text)
            return
        pane = self.panes[event.row]
        if event.kind == "step_started":
            self.speed_labels[event.row].setText("writing…")
        elif event.kind == "text_delta":
            pane.append(event.text)
        elif event.kind == "step_finished":
            pane.set_text(event.text)

    def _on_finished(self, outcome: str, value: Any) -> None:
        self.relay = None
        if outcome == "completed":
            self.rows = list(value)
            for row, label in zip(self.rows, self.speed_labels, strict=False):
                text = f"{row.tokens_per_s:.1f} tok/s · {row.num_completion_tokens} tokens · {row.finish_reason}"
                label.setText(text + (f" · {row.error}" if row.error else ""))
        elif outcome == "cancelled":
            self.message.show_info("Compare stopped.")
        else:
            log.error("compare failed: %s", value)
            self.message.show_error(str(value))
        self._update_buttons()
        self.finished.emit(outcome)
