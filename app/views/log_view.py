"""The log view: every `logging` record of this session, newest at the bottom, copyable."""

from __future__ import annotations

from PySide6.QtGui import QGuiApplication
from PySide6.QtWidgets import QComboBox, QHBoxLayout, QPlainTextEdit, QPushButton, QVBoxLayout, QWidget

MAX_LINES = 5000
LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


class LogView(QWidget):
    """Connect `append_record` to `LogBridge.record_logged`."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.text = QPlainTextEdit()
        self.text.setReadOnly(True)
        self.text.setMaximumBlockCount(MAX_LINES)
        self.text.setObjectName("logText")
        self.level_combo = QComboBox()
        self.level_combo.addItems(LEVELS)
        self.level_combo.setCurrentText("INFO")
        self.copy_button = QPushButton("Copy all")
        self.clear_button = QPushButton("Clear")
        self.copy_button.clicked.connect(lambda: QGuiApplication.clipboard().setText(self.text.toPlainText()))
        self.clear_button.clicked.connect(self.text.clear)
        tools = QHBoxLayout()
        tools.addWidget(self.level_combo)
        tools.addStretch(1)
        tools.addWidget(self.copy_button)
        tools.addWidget(self.clear_button)
        layout = QVBoxLayout(self)
        layout.addLayout(tools)
        layout.addWidget(self.text, 1)

    def append_record(self, level: str, text: str) -> None:
        if level in LEVELS and LEVELS.index(level) < self.level_combo.currentIndex():
            return
        self.text.appendPlainText(text)
