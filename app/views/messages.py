"""Readable error dialogs (details copyable) and inline messages."""

from __future__ import annotations

import traceback

from PySide6.QtCore import Qt
from PySide6.QtWidgets import QLabel, QMessageBox, QWidget


def error_summary(exc: BaseException) -> str:
    """The user-facing text of an error: its message (our errors name the thing and the reason)."""
    text = str(exc).strip()
    return text or type(exc).__name__


def error_details(exc: BaseException) -> str:
    return "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)).strip()


def confirm(parent: QWidget | None, title: str, text: str) -> bool:
    """Ask a yes/no question whose safe answer (No) is the default."""
    yes, no = QMessageBox.StandardButton.Yes, QMessageBox.StandardButton.No
    return QMessageBox.question(parent, title, text, yes | no, no) == yes


def show_error(parent: QWidget | None, title: str, exc: BaseException) -> QMessageBox:
    """A non-blocking error dialog; the full traceback is under "Show Details..." and can be copied."""
    box = QMessageBox(QMessageBox.Icon.Warning, title, error_summary(exc), QMessageBox.StandardButton.Ok, parent)
    box.setObjectName("errorDialog")
    box.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
    box.setDetailedText(error_details(exc))
    box.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
    box.open()
    return box


class InlineMessage(QLabel):
    """An error or info line inside a view; selectable so it can be copied."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWordWrap(True)
        self.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.setTextFormat(Qt.TextFormat.PlainText)
        self.setContentsMargins(6, 4, 6, 4)
        self.hide()

    def show_error(self, text: str) -> None:
        self._show("inlineError", text)

    def show_info(self, text: str) -> None:
        self._show("inlineInfo", text)

    def clear_message(self) -> None:
        self.clear()
        self.hide()

    def _show(self, name: str, text: str) -> None:
        self.setObjectName(name)
        self.setText(text)
        self.style().unpolish(self)
        self.style().polish(self)
        self.show()
