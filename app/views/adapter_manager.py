"""The adapter manager: table, Import / Remove / Enable-Disable, details."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (
    QAbstractItemView,
    QFileDialog,
    QHBoxLayout,
    QHeaderView,
    QInputDialog,
    QPlainTextEdit,
    QPushButton,
    QSplitter,
    QTableView,
    QVBoxLayout,
    QWidget,
)

from app.formatting import format_bytes
from app.jobs import JobRunner
from app.models.adapter_table import AdapterTableModel, state_text
from app.views.messages import InlineMessage, confirm

if TYPE_CHECKING:
    from storyloom.studio import AdapterRow, Studio

log = logging.getLogger(__name__)


def describe_adapter(row: AdapterRow) -> str:
    lines = [
        f"Name: {row.name}",
        f"Role: {row.role}" + (" (built-in)" if row.builtin else ""),
        f"State: {state_text(row)}",
        f"Enabled: {'yes' if row.enabled else 'no'}",
        f"Rank: {', '.join(str(r) for r in row.ranks) or '—'}",
        f"Target modules: {', '.join(row.target_modules) or '—'}",
        f"Size: {format_bytes(row.size_bytes) if row.installed else '—'}",
        f"SHA-256: {row.sha256 or '—'}",
        f"Folder: {row.path or '—'}",
        "",
        row.description,
    ]
    if not row.installed:
        lines += ["", f"Weights are not installed: the '{row.role}' step runs on the base model."]
    lines += [f"Warning: {w}" for w in row.warnings]
    return "\n".join(lines)


class AdapterManager(QWidget):
    """`adapters_changed(rows)` is emitted after every reload (the Compare view lists the same adapters)."""

    adapters_changed = Signal(list)

    def __init__(self, studio: Studio, jobs: JobRunner, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.studio = studio
        self.jobs = jobs
        self.model = AdapterTableModel(self)
        self.table = QTableView()
        self.table.setModel(self.model)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.table.setAlternatingRowColors(True)
        self.table.verticalHeader().hide()
        self.table.horizontalHeader().setStretchLastSection(True)
        self.table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        self.table.selectionModel().selectionChanged.connect(self._on_selection)
        self.details = QPlainTextEdit()
        self.details.setReadOnly(True)
        self.details.setPlaceholderText("Select an adapter to see its details.")
        self.import_button = QPushButton("Import…", objectName="primary")
        self.remove_button = QPushButton("Remove…", objectName="danger")
        self.toggle_button = QPushButton("Disable")
        self.refresh_button = QPushButton("Refresh")
        self.import_button.clicked.connect(self._ask_import)
        self.remove_button.clicked.connect(lambda: self.remove_selected())
        self.toggle_button.clicked.connect(self.toggle_selected)
        self.refresh_button.clicked.connect(self.refresh)
        self.message = InlineMessage()
        buttons = QHBoxLayout()
        for button in (self.import_button, self.toggle_button, self.remove_button):
            buttons.addWidget(button)
        buttons.addStretch(1)
        buttons.addWidget(self.refresh_button)
        split = QSplitter(Qt.Orientation.Vertical)
        split.addWidget(self.table)
        split.addWidget(self.details)
        split.setStretchFactor(0, 3)
        split.setStretchFactor(1, 1)
        layout = QVBoxLayout(self)
        layout.addLayout(buttons)
        layout.addWidget(self.message)
        layout.addWidget(split, 1)
        self._update_buttons()

    # --- data --------------------------------------------------------------------------------------------
    def refresh(self) -> None:
        """Reload the rows off the GUI thread (sizes and hashes may read files)."""
        self.jobs.run(self.studio.list_adapters, self._show_rows, self._show_error("Adapters could not be listed"))

    def _show_rows(self, rows: list[AdapterRow]) -> None:
        selected = self.selected()
        self.model.set_rows(rows)
        if selected is not None:
            for i, row in enumerate(rows):
                if row.name == selected.name:
                    self.table.selectRow(i)
        self._on_selection()
        self.adapters_changed.emit(rows)

    def selected(self) -> AdapterRow | None:
        rows = self.table.selectionModel().selectedRows()
        return self.model.row_at(rows[0].row()) if rows else None

    def _on_selection(self, *_: object) -> None:
        row = self.selected()
        self.details.setPlainText(describe_adapter(row) if row is not None else "")
        self._update_buttons()

    def _update_buttons(self) -> None:
        row = self.selected()
        self.remove_button.setEnabled(row is not None and not row.builtin)
        self.remove_button.setToolTip(
            "Built-in adapters cannot be removed; disable them instead" if row is not None and row.builtin else ""
        )
        self.toggle_button.setEnabled(row is not None)
        self.toggle_button.setText("Enable" if row is not None and not row.enabled else "Disable")

    # --- actions -----------------------------------------------------------------------------------------
    def _ask_import(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Import a LoRA adapter (PEFT folder)")
        if not folder:
            return
        name, ok = QInputDialog.getText(self, "Adapter name", "Name for this adapter:", text=Path(folder).name)
        if ok and name.strip():
            self.import_folder(Path(folder), name.strip())

    def import_folder(self, folder: Path, name: str) -> None:
        """Validate and import off the GUI thread; a validation error is shown verbatim, nothing imported."""
        self.message.show_info(f"Checking “{folder}”…")
        self.import_button.setEnabled(False)

        def done(row: AdapterRow) -> None:
            self.import_button.setEnabled(True)
            warnings = "".join(f" Warning: {w}." for w in row.warnings)
            self.message.show_info(f"Imported adapter “{row.name}” ({row.role}).{warnings}")
            log.info("adapter %s imported from %s", row.name, folder)
            self.refresh()

        def failed(exc: BaseException) -> None:
            self.import_button.setEnabled(True)
            log.error("adapter import from %s failed: %s", folder, exc)
            self.message.show_error(str(exc))

        self.jobs.run(lambda: self.studio.import_adapter(folder, name), done, failed)

    def remove_selected(self, confirmed: bool = False) -> None:
        row = self.selected()
        if row is None:
            return
        question = f"Remove the adapter “{row.name}” and delete its imported files?"
        if not confirmed and not confirm(self, "Remove adapter?", question):
            return
        name = row.name
        self.jobs.run(
            lambda: self.studio.remove_adapter(name),
            lambda _: self._after_change(f"Removed adapter “{name}”."),
            self._show_error(f"Could not remove “{name}”"),
        )

    def toggle_selected(self) -> None:
        row = self.selected()
        if row is None:
            return
        name, enabled = row.name, not row.enabled
        self.jobs.run(
            lambda: self.studio.set_adapter_enabled(name, enabled),
            lambda _: self._after_change(f"{'Enabled' if enabled else 'Disabled'} adapter “{name}”."),
            self._show_error(f"Could not change “{name}”"),
        )

    def _after_change(self, text: str) -> None:
        log.info("%s", text)
        self.message.show_info(text)
        self.refresh()

    def _show_error(self, what: str):
        def show(exc: BaseException) -> None:
            log.error("%s: %s", what, exc)
            self.message.show_error(f"{what}: {exc}")

        return show
