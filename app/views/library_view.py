"""The library: a gallery of past stories with thumbnails, search, open, export and delete."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

from PySide6.QtCore import QMargins, QModelIndex, QTimer, Signal
from PySide6.QtGui import QImage
from PySide6.QtWidgets import (
    QFileDialog,
    QHBoxLayout,
    QLineEdit,
    QListView,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from app.jobs import JobRunner
from app.models.library_model import THUMB_SIZE, LibraryModel
from app.views.messages import InlineMessage, confirm
from app.workers import pil_to_qimage
from storyloom.library.store import IMAGE_PNG

if TYPE_CHECKING:
    from storyloom.library import StoryLibrary, StorySummary
    from storyloom.studio import StoryDraft

log = logging.getLogger(__name__)

SEARCH_DELAY_MS = 200


class LibraryView(QWidget):
    """`open_requested(draft, read_only, image_file)` asks the main window to show a story."""

    open_requested = Signal(object, bool, object)

    def __init__(self, library: StoryLibrary, jobs: JobRunner, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.library = library
        self.jobs = jobs
        self.model = LibraryModel(self)
        self.search_edit = QLineEdit()
        self.search_edit.setPlaceholderText("Search titles and ideas")
        self.search_edit.setClearButtonEnabled(True)
        self._search_timer = QTimer(self, singleShot=True, interval=SEARCH_DELAY_MS)
        self._search_timer.timeout.connect(self.refresh)
        self.search_edit.textChanged.connect(self._search_timer.start)
        self.list_view = QListView()
        self.list_view.setViewMode(QListView.ViewMode.IconMode)
        self.list_view.setResizeMode(QListView.ResizeMode.Adjust)
        self.list_view.setMovement(QListView.Movement.Static)
        self.list_view.setIconSize(THUMB_SIZE)
        self.list_view.setGridSize(THUMB_SIZE.grownBy(QMargins(18, 12, 18, 44)))
        self.list_view.setWordWrap(True)
        self.list_view.setUniformItemSizes(True)
        self.list_view.setSpacing(6)
        self.list_view.setModel(self.model)
        self.list_view.selectionModel().selectionChanged.connect(self._update_buttons)
        self.list_view.doubleClicked.connect(lambda index: self.open_story(index, read_only=True))
        self.open_button = QPushButton("Open")
        self.open_button.setToolTip("Show the story in the workspace, read-only")
        self.draft_button = QPushButton("Open as new draft")
        self.export_md_button = QPushButton("Export Markdown…")
        self.export_html_button = QPushButton("Export HTML…")
        self.delete_button = QPushButton("Delete…", objectName="danger")
        self.open_button.clicked.connect(lambda: self.open_story(self._current_index(), read_only=True))
        self.draft_button.clicked.connect(lambda: self.open_story(self._current_index(), read_only=False))
        self.export_md_button.clicked.connect(lambda: self.export_current("md"))
        self.export_html_button.clicked.connect(lambda: self.export_current("html"))
        self.delete_button.clicked.connect(lambda: self.delete_current())
        self.message = InlineMessage()
        top = QHBoxLayout()
        top.addWidget(self.search_edit, 1)
        buttons = QHBoxLayout()
        for button in (self.open_button, self.draft_button, self.export_md_button, self.export_html_button):
            buttons.addWidget(button)
        buttons.addStretch(1)
        buttons.addWidget(self.delete_button)
        layout = QVBoxLayout(self)
        layout.addLayout(top)
        layout.addWidget(self.message)
        layout.addWidget(self.list_view, 1)
        layout.addLayout(buttons)
        self._update_buttons()

    # --- listing -----------------------------------------------------------------------------------------
    def refresh(self) -> None:
        """Reload the list (a fast SQLite query), then load missing thumbnails off the GUI thread."""
        query = self.search_edit.text().strip() or None
        try:
            stories = self.library.list(query)
        except Exception as exc:
            self.message.show_error(f"The library could not be read: {exc}")
            log.error("library list failed: %s", exc)
            return
        self.message.clear_message()
        self.model.set_stories(stories)
        for story in stories:
            if story.has_image and not self.model.has_thumbnail(story.id):
                self._load_thumbnail(story)
        self._update_buttons()

    def _load_thumbnail(self, story: StorySummary) -> None:
        size = THUMB_SIZE.width()

        def load() -> QImage | None:
            thumb = self.library.thumbnail(story.id, size)
            return None if thumb is None else pil_to_qimage(thumb)

        def done(image: QImage | None) -> None:
            if image is not None:
                self.model.set_thumbnail(story.id, image)

        self.jobs.run(load, done, lambda exc: log.warning("thumbnail of %s failed: %s", story.id, exc))

    # --- actions -----------------------------------------------------------------------------------------
    def _current_index(self) -> QModelIndex:
        return self.list_view.currentIndex()

    def selected_story(self) -> StorySummary | None:
        indexes = self.list_view.selectionModel().selectedIndexes()
        return self.model.story_at(indexes[0].row()) if indexes else None

    def _update_buttons(self) -> None:
        has = self.selected_story() is not None
        for button in (
            self.open_button,
            self.draft_button,
            self.export_md_button,
            self.export_html_button,
            self.delete_button,
        ):
            button.setEnabled(has)

    def open_story(self, index: QModelIndex, read_only: bool) -> None:
        if not index.isValid():
            return
        story = self.model.story_at(index.row())
        try:
            draft: StoryDraft = self.library.get(story.id)
        except Exception as exc:
            self.message.show_error(f"Story “{story.title}” could not be opened: {exc}")
            return
        image_file = story.folder / IMAGE_PNG
        self.open_requested.emit(draft, read_only, image_file if image_file.is_file() else None)

    def export_current(self, fmt: str, folder: Path | None = None) -> Path | None:
        """Export the selected story into a folder the user picks; asks before replacing a file."""
        story = self.selected_story()
        if story is None:
            return None
        if folder is None:
            chosen = QFileDialog.getExistingDirectory(self, f"Export “{story.title}” to folder")
            if not chosen:
                return None
            folder = Path(chosen)
        try:
            path = self.library.export(story.id, fmt, folder)
        except Exception as exc:
            if not self._ask_overwrite(exc):
                self.message.show_error(f"Export failed: {exc}")
                return None
            try:
                path = self.library.export(story.id, fmt, folder, overwrite=True)
            except Exception as exc2:
                self.message.show_error(f"Export failed: {exc2}")
                return None
        self.message.show_info(f"Exported to {path}")
        log.info("story %s exported to %s", story.id, path)
        return path

    def _ask_overwrite(self, exc: Exception) -> bool:
        if "exists" not in str(exc):
            return False
        return confirm(self, "Replace file?", f"{exc}\n\nReplace it?")

    def delete_current(self, confirmed: bool = False) -> None:
        story = self.selected_story()
        if story is None:
            return
        question = f"Delete “{story.title or story.idea}” from the library?\nThis cannot be undone."
        if not confirmed and not confirm(self, "Delete story?", question):
            return
        try:
            self.library.delete(story.id)
        except Exception as exc:
            self.message.show_error(f"Could not delete “{story.title}”: {exc}")
            return
        self.model.forget_thumbnail(story.id)
        log.info("story %s deleted", story.id)
        self.refresh()
