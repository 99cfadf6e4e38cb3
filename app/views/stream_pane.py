"""One streaming text pane (Concept, Story, Image prompt), labelled with what produced it."""

from __future__ import annotations

from PySide6.QtCore import Signal
from PySide6.QtGui import QTextCursor
from PySide6.QtWidgets import QHBoxLayout, QLabel, QPlainTextEdit, QVBoxLayout, QWidget

SOURCE_KINDS = ("adapter", "base", "missing")


class StreamPane(QWidget):
    """A titled text area that grows as deltas arrive. `editable` panes emit `edited` on user changes."""

    edited = Signal()

    def __init__(self, title: str, editable: bool = False, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.title_label = QLabel(title, objectName="paneTitle")
        self.source_label = QLabel("", objectName="adapterBadge")
        self.source_label.hide()
        self.text_edit = QPlainTextEdit()
        self.text_edit.setReadOnly(not editable)
        self.text_edit.setPlaceholderText("…")
        self._editable = editable
        self._streaming = False
        self.text_edit.textChanged.connect(self._on_text_changed)
        header = QHBoxLayout()
        header.addWidget(self.title_label)
        header.addStretch(1)
        header.addWidget(self.source_label)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addLayout(header)
        layout.addWidget(self.text_edit, 1)

    def set_source(self, text: str, kind: str) -> None:
        """Label the pane: kind "adapter" (the adapter's name), "base" (base model) or "missing"."""
        assert kind in SOURCE_KINDS, kind
        self.source_label.setText(text)
        self.source_label.setToolTip(text)
        self.source_label.setProperty("kind", kind)
        self.source_label.style().unpolish(self.source_label)
        self.source_label.style().polish(self.source_label)
        self.source_label.setVisible(bool(text))

    def source_text(self) -> str:
        return "" if self.source_label.isHidden() else self.source_label.text()

    def text(self) -> str:
        return self.text_edit.toPlainText()

    def set_text(self, text: str) -> None:
        self._streaming = True
        self.text_edit.setPlainText(text)
        self._streaming = False

    def append(self, delta: str) -> None:
        self._streaming = True
        cursor = self.text_edit.textCursor()
        cursor.movePosition(QTextCursor.MoveOperation.End)
        cursor.insertText(delta)
        self.text_edit.ensureCursorVisible()
        self._streaming = False

    def clear(self) -> None:
        self.set_text("")
        self.set_source("", "base")

    def set_editable(self, editable: bool) -> None:
        self.text_edit.setReadOnly(not (editable and self._editable))

    def _on_text_changed(self) -> None:
        if not self._streaming:
            self.edited.emit()
