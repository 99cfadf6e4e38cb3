"""The library gallery model: one item per `StorySummary`, with a thumbnail once it is loaded."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from PySide6.QtCore import QAbstractListModel, QModelIndex, QPersistentModelIndex, QSize, Qt
from PySide6.QtGui import QColor, QIcon, QImage, QPainter, QPixmap

if TYPE_CHECKING:
    from storyloom.library import StorySummary

Index = QModelIndex | QPersistentModelIndex

THUMB_SIZE = QSize(160, 160)


def placeholder_pixmap(text: str) -> QPixmap:
    pixmap = QPixmap(THUMB_SIZE)
    pixmap.fill(QColor("#ecebf7"))
    p = QPainter(pixmap)
    p.setPen(QColor("#8a8fa3"))
    p.drawText(pixmap.rect(), Qt.AlignmentFlag.AlignCenter, text)
    p.end()
    return pixmap


class LibraryModel(QAbstractListModel):
    """Display: title; decoration: thumbnail; tooltip: idea and date; UserRole: the StorySummary."""

    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        self._stories: list[StorySummary] = []
        self._thumbs: dict[str, QIcon] = {}
        self._no_image = QIcon(placeholder_pixmap("no image"))
        self._loading = QIcon(placeholder_pixmap("…"))

    def set_stories(self, stories: list[StorySummary]) -> None:
        self.beginResetModel()
        self._stories = list(stories)
        self.endResetModel()

    def set_thumbnail(self, story_id: str, image: QImage) -> None:
        """Store a thumbnail (GUI thread: QPixmap) and repaint its item."""
        self._thumbs[story_id] = QIcon(QPixmap.fromImage(image))
        for row, story in enumerate(self._stories):
            if story.id == story_id:
                index = self.index(row)
                self.dataChanged.emit(index, index, [Qt.ItemDataRole.DecorationRole])

    def has_thumbnail(self, story_id: str) -> bool:
        return story_id in self._thumbs

    def forget_thumbnail(self, story_id: str) -> None:
        self._thumbs.pop(story_id, None)

    def story_at(self, row: int) -> StorySummary:
        return self._stories[row]

    def stories(self) -> list[StorySummary]:
        return list(self._stories)

    def rowCount(self, parent: Index = QModelIndex()) -> int:  # noqa: B008
        return 0 if parent.isValid() else len(self._stories)

    def data(self, index: Index, role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        if not index.isValid():
            return None
        story = self._stories[index.row()]
        if role == Qt.ItemDataRole.DisplayRole:
            title = story.title or story.idea
            return f"Demo · {title}" if story.demo else title
        if role == Qt.ItemDataRole.DecorationRole:
            if not story.has_image:
                return self._no_image
            return self._thumbs.get(story.id, self._loading)
        if role == Qt.ItemDataRole.ToolTipRole:
            return f"{story.title}\nIdea: {story.idea}\nCreated: {story.created}"
        if role == Qt.ItemDataRole.UserRole:
            return story
        return None
