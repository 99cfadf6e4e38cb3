"""The adapter table: one row per `AdapterRow` from `Studio.list_adapters()`."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from PySide6.QtCore import QAbstractTableModel, QModelIndex, QPersistentModelIndex, Qt
from PySide6.QtGui import QColor

from app.formatting import format_bytes

if TYPE_CHECKING:
    from storyloom.studio import AdapterRow

Index = QModelIndex | QPersistentModelIndex

COLUMNS = ("Name", "Role", "Rank", "Target modules", "Size", "SHA-256", "State")
STATE_TEXT = {"disk": "on disk", "ram": "in RAM", "gpu": "on GPU slot"}


def state_text(row: AdapterRow) -> str:
    if not row.installed:
        return "weights not installed"
    text = STATE_TEXT.get(row.state, row.state)
    return text if row.enabled else f"{text} (disabled)"


def cell_text(row: AdapterRow, column: int) -> str:
    if column == 0:
        return row.name
    if column == 1:
        return row.role
    if column == 2:
        return "—" if row.rank is None else ", ".join(str(r) for r in sorted(set(row.ranks)))
    if column == 3:
        return ", ".join(row.target_modules) or "—"
    if column == 4:
        return format_bytes(row.size_bytes) if row.installed else "—"
    if column == 5:
        return row.sha256[:12] if row.sha256 else "—"
    return state_text(row)


class AdapterTableModel(QAbstractTableModel):
    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        self._rows: list[AdapterRow] = []

    def set_rows(self, rows: list[AdapterRow]) -> None:
        self.beginResetModel()
        self._rows = list(rows)
        self.endResetModel()

    def row_at(self, row: int) -> AdapterRow:
        return self._rows[row]

    def rows(self) -> list[AdapterRow]:
        return list(self._rows)

    def rowCount(self, parent: Index = QModelIndex()) -> int:  # noqa: B008
        return 0 if parent.isValid() else len(self._rows)

    def columnCount(self, parent: Index = QModelIndex()) -> int:  # noqa: B008
        return 0 if parent.isValid() else len(COLUMNS)

    def headerData(self, section: int, orientation: Qt.Orientation, role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        if orientation == Qt.Orientation.Horizontal and role == Qt.ItemDataRole.DisplayRole:
            return COLUMNS[section]
        return None

    def data(self, index: Index, role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        if not index.isValid():
            return None
        row = self._rows[index.row()]
        if role == Qt.ItemDataRole.DisplayRole:
            return cell_text(row, index.column())
        if role == Qt.ItemDataRole.ToolTipRole:
            if index.column() == 5:
                return row.sha256 or None
            return row.description or None
        if role == Qt.ItemDataRole.ForegroundRole and (not row.installed or not row.enabled):
            return QColor("#8a8fa3")
        if role == Qt.ItemDataRole.UserRole:
            return row
        return None
