"""The story workspace: idea, Generate/Stop, three streaming panes, the image panel, re-run buttons."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PySide6.QtCore import QRegularExpression, Qt, Signal
from PySide6.QtGui import QImage, QRegularExpressionValidator
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPlainTextEdit,
    QPushButton,
    QSplitter,
    QVBoxLayout,
    QWidget,
)

from app.views.image_panel import ImagePanel
from app.views.messages import InlineMessage
from app.views.stream_pane import StreamPane
from app.workers import JobRelay, StudioClient, pil_to_qimage
from storyloom.library.store import IMAGE_PNG
from storyloom.workflow import BASE_MODEL

if TYPE_CHECKING:
    from storyloom.studio import Job, StoryDraft, StoryEvent, StoryOptions

log = logging.getLogger(__name__)

# The SDXL training buckets (width, height), as engine.sdxl.SDXL_BUCKETS (a test keeps them equal; the GUI
# does not import the engine); None = the settings' default size.
IMAGE_SIZES: tuple[tuple[int, int] | None, ...] = (
    None,
    (1024, 1024),
    (1152, 896),
    (896, 1152),
    (1216, 832),
    (832, 1216),
    (1344, 768),
    (768, 1344),
)


def source_kind(source: str) -> str:
    """How a pane's badge looks: an adapter, the base model, or the base standing in for missing weights."""
    if "not installed" in source:
        return "missing"
    if source.startswith(BASE_MODEL):
        return "base"
    return "adapter"


class StoryWorkspace(QWidget):
    """Type an idea, watch the concept, story and image prompt stream, then the picture being drawn.

    `story_saved(story_id)` is emitted when a job saved a story in the library.
    """

    story_saved = Signal(str)

    def __init__(self, client: StudioClient, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.client = client
        self.draft: StoryDraft | None = None
        self.relay: JobRelay | None = None
        self.read_only = False
        self._ready = False
        self._build()
        self._update_buttons()

    # --- layout ------------------------------------------------------------------------------------------
    def _build(self) -> None:
        self.demo_banner = QLabel(
            "Demo models: the text is gibberish and the image abstract. Choose real models in Settings.",
            objectName="demoBanner",
        )
        self.demo_banner.hide()
        self.library_banner = QLabel("", objectName="inlineInfo")
        self.library_banner.hide()
        self.continue_button = QPushButton("Continue as new draft")
        self.continue_button.hide()
        self.continue_button.clicked.connect(self.continue_as_draft)

        self.idea_edit = QPlainTextEdit()
        self.idea_edit.setPlaceholderText("Your idea — e.g. “a lighthouse keeper who befriends a storm”")
        self.idea_edit.setFixedHeight(64)
        self.idea_edit.textChanged.connect(self._update_buttons)
        self.generate_button = QPushButton("Generate", objectName="primary")
        self.generate_button.setShortcut("Ctrl+Return")
        self.generate_button.setToolTip("Write a concept, then the story and the image prompt, then draw (Ctrl+Enter)")
        self.stop_button = QPushButton("Stop")
        self.generate_button.clicked.connect(self.generate)
        self.stop_button.clicked.connect(self.stop)

        self.random_seed = QCheckBox("Random seed")
        self.random_seed.setChecked(True)
        self.seed_edit = QLineEdit()  # seeds go up to 2**32 - 1, more than a QSpinBox holds
        self.seed_edit.setValidator(QRegularExpressionValidator(QRegularExpression(r"\d{0,10}"), self.seed_edit))
        self.seed_edit.setPlaceholderText("seed")
        self.seed_edit.setMaximumWidth(120)
        self.seed_edit.setEnabled(False)
        self.random_seed.toggled.connect(self._update_buttons)
        self.size_combo = QComboBox()
        for size in IMAGE_SIZES:
            self.size_combo.addItem("Default size" if size is None else f"{size[0]} × {size[1]}", size)

        self.concept_pane = StreamPane("Concept")
        self.story_pane = StreamPane("Story")
        self.prompt_pane = StreamPane("Image prompt", editable=True)
        self.negative_edit = QLineEdit()
        self.negative_edit.setPlaceholderText("Negative prompt")
        self.prompt_pane.edited.connect(self._update_buttons)
        self.negative_edit.textEdited.connect(self._update_buttons)
        self.image_panel = ImagePanel()
        self.image_panel.save_failed.connect(self.message_error)

        self.new_story_button = QPushButton("New story")
        self.new_story_button.setToolTip("Same concept: a new story and a new image prompt")
        self.new_image_button = QPushButton("New image")
        self.new_image_button.setToolTip("Same prompt, a new seed")
        self.rerender_button = QPushButton("Re-render")
        self.rerender_button.setToolTip("Draw again with the edited image prompt (same seed)")
        self.new_story_button.clicked.connect(self.new_story)
        self.new_image_button.clicked.connect(self.new_image)
        self.rerender_button.clicked.connect(self.rerender)
        self.message = InlineMessage()

        idea_row = QHBoxLayout()
        idea_row.addWidget(self.idea_edit, 1)
        buttons = QVBoxLayout()
        buttons.addWidget(self.generate_button)
        buttons.addWidget(self.stop_button)
        idea_row.addLayout(buttons)
        options_row = QHBoxLayout()
        options_row.addWidget(self.random_seed)
        options_row.addWidget(self.seed_edit)
        options_row.addSpacing(12)
        options_row.addWidget(QLabel("Size"))
        options_row.addWidget(self.size_combo)
        options_row.addStretch(1)
        for button in (self.new_story_button, self.new_image_button, self.rerender_button):
            options_row.addWidget(button)

        prompt_box = QWidget()
        prompt_layout = QVBoxLayout(prompt_box)
        prompt_layout.setContentsMargins(0, 0, 0, 0)
        prompt_layout.addWidget(self.prompt_pane, 1)
        prompt_layout.addWidget(self.negative_edit)
        text_split = QSplitter(Qt.Orientation.Vertical)
        text_split.addWidget(self.concept_pane)
        text_split.addWidget(self.story_pane)
        text_split.addWidget(prompt_box)
        text_split.setStretchFactor(0, 2)
        text_split.setStretchFactor(1, 4)
        text_split.setStretchFactor(2, 2)
        main_split = QSplitter(Qt.Orientation.Horizontal)
        main_split.addWidget(text_split)
        main_split.addWidget(self.image_panel)
        main_split.setStretchFactor(0, 3)
        main_split.setStretchFactor(1, 2)

        banner_row = QHBoxLayout()
        banner_row.addWidget(self.library_banner, 1)
        banner_row.addWidget(self.continue_button)
        layout = QVBoxLayout(self)
        layout.addWidget(self.demo_banner)
        layout.addLayout(banner_row)
        layout.addLayout(idea_row)
        layout.addLayout(options_row)
        layout.addWidget(self.message)
        layout.addWidget(main_split, 1)

    # --- state -------------------------------------------------------------------------------------------
    def set_ready(self, ready: bool, demo: bool = False) -> None:
        self._ready = ready
        self.demo_banner.setVisible(ready and demo)
        self._update_buttons()

    @property
    def is_busy(self) -> bool:
        return self.relay is not None

    def _update_buttons(self) -> None:
        busy = self.is_busy
        can_run = self._ready and not busy and not self.read_only
        has_draft = self.draft is not None
        has_prompt = bool(self.prompt_pane.text().strip())
        self.generate_button.setEnabled(can_run and bool(self.idea_edit.toPlainText().strip()))
        self.stop_button.setEnabled(busy)
        self.new_story_button.setEnabled(can_run and has_draft and bool(self.draft.concept))
        self.new_image_button.setEnabled(can_run and has_draft and has_prompt)
        self.rerender_button.setEnabled(can_run and has_draft and has_prompt)
        for widget in (self.idea_edit, self.random_seed, self.size_combo, self.negative_edit):
            widget.setEnabled(not busy and not self.read_only)
        self.seed_edit.setEnabled(not busy and not self.read_only and not self.random_seed.isChecked())
        self.prompt_pane.set_editable(not busy and not self.read_only)

    # --- requests ----------------------------------------------------------------------------------------
    def options(self) -> StoryOptions:
        options = self.client.studio.default_options()
        changes: dict[str, Any] = {"seed": self.chosen_seed()}
        size = self.size_combo.currentData()
        if size is not None:
            changes["width"], changes["height"] = size
        return dataclasses.replace(options, **changes)

    def chosen_seed(self) -> int | None:
        """None for a random seed; raises ValueError for a missing fixed seed (the Studio checks the range)."""
        if self.random_seed.isChecked():
            return None
        text = self.seed_edit.text().strip()
        if not text:
            raise ValueError("seed: type a number, or tick “Random seed”")
        return int(text)

    def generate(self) -> None:
        studio = self.client.studio
        idea = self.idea_edit.toPlainText()
        try:
            options = self.options()
        except ValueError as exc:  # a bad seed: say so and keep the current story on screen
            self.message_error(str(exc))
            return
        self._clear_outputs()
        self._start(lambda on_event: studio.generate(idea, options, on_event))

    def new_story(self) -> None:
        draft = self.draft
        assert draft is not None
        self.story_pane.clear()
        self.prompt_pane.clear()
        self._start(lambda on_event: self.client.studio.new_story(draft, on_event))

    def new_image(self) -> None:
        draft = self.draft
        assert draft is not None
        self._start(lambda on_event: self.client.studio.new_image(draft, on_event))

    def rerender(self) -> None:
        draft = self.draft
        assert draft is not None
        prompt, negative = self.prompt_pane.text(), self.negative_edit.text()
        self._start(lambda on_event: self.client.studio.rerender(draft, prompt, negative, on_event))

    def stop(self) -> None:
        if self.relay is not None:
            log.info("stopping the running story job")
            self.relay.cancel()
            self.stop_button.setEnabled(False)

    def _start(self, start: Callable[[Callable[[StoryEvent], None]], Job]) -> None:
        self.message.clear_message()
        try:
            self.relay = self.client.run_job(start, self._on_event, self._on_finished)
        except Exception as exc:  # InvalidRequestError, NotReadyError, ValueError: shown, nothing started
            self.message_error(str(exc))
            return
        self._update_buttons()

    def _clear_outputs(self) -> None:
        for pane in (self.concept_pane, self.story_pane, self.prompt_pane):
            pane.clear()
        self.negative_edit.clear()
        self.image_panel.reset()
        self.draft = None

    # --- events (GUI thread) -----------------------------------------------------------------------------
    def _pane(self, step: str) -> StreamPane | None:
        return {"concept": self.concept_pane, "story": self.story_pane, "prompt": self.prompt_pane}.get(step)

    def _on_event(self, event: StoryEvent, image: QImage | None) -> None:
        pane = self._pane(event.step)
        if event.kind == "step_started":
            if pane is not None:
                pane.set_text("")
                pane.set_source(event.source, source_kind(event.source))
            elif event.step == "image":
                self.image_panel.wait("Waiting to draw…")
        elif event.kind == "text_delta" and pane is not None:
            pane.append(event.text)
        elif event.kind == "step_finished":
            if pane is not None:
                pane.set_text(event.text)
            if event.draft is not None:
                self._show_draft_fields(event.draft)
        elif event.kind == "image_progress" and event.progress is not None:
            self.image_panel.set_progress(event.progress[0], event.progress[1], image)
        elif event.kind == "image_done" and image is not None:
            self.image_panel.set_final(image, self._image_caption(event.draft))
        elif event.kind == "notice":
            log.info("notice: %s", event.text)
            self.message.show_info(event.text)
        elif event.kind == "error":
            self.message_error(event.text)
        elif event.kind == "finished" and event.draft is not None:
            self.draft = event.draft

    def _on_finished(self, outcome: str, value: Any) -> None:
        self.relay = None
        if outcome == "completed":
            self.draft = value
            self._show_sources(value)
            if value.story_id:
                image_file = self.client.studio.library.root / value.story_id / IMAGE_PNG
                self.image_panel.set_source(image_file if image_file.is_file() else None)
                self.story_saved.emit(value.story_id)
        elif outcome == "cancelled":
            self.message.show_info("Stopped. Nothing was saved for the unfinished step.")
            if self.image_panel.final_image() is None:
                self.image_panel.set_stopped("Stopped")
        elif outcome == "failed":
            if self.message.objectName() != "inlineError" or not self.message.isVisible():
                self.message_error(str(value))  # the job's "error" event normally said it already
            if self.image_panel.final_image() is None:
                self.image_panel.set_stopped("Failed")
        self._update_buttons()

    def message_error(self, text: str) -> None:
        log.error("%s", text)
        self.message.show_error(text)

    def _show_sources(self, draft: StoryDraft) -> None:
        for step in ("concept", "story", "prompt"):
            source = draft.sources.get(step)
            if source:
                self._pane(step).set_source(source, source_kind(source))

    def _show_draft_fields(self, draft: StoryDraft) -> None:
        if draft.negative_prompt and not self.negative_edit.text():
            self.negative_edit.setText(draft.negative_prompt)
        if draft.seed is not None:
            self.seed_edit.setText(str(draft.seed))

    @staticmethod
    def _image_caption(draft: StoryDraft | None) -> str:
        if draft is None or draft.seed is None:
            return ""
        return f"seed {draft.seed}" + (f" · {draft.width}×{draft.height}" if draft.width else "")

    # --- library -----------------------------------------------------------------------------------------
    def show_story(self, draft: StoryDraft, read_only: bool, image_file: Path | None = None) -> None:
        """Restore a library story: read-only, or as a new draft (saved as a copy)."""
        self.draft = draft if read_only else draft.copy(story_id=None)
        self.read_only = read_only
        self.message.clear_message()
        self.idea_edit.setPlainText(draft.idea)
        story_text = f"{draft.title}\n\n{draft.story}" if draft.title else draft.story
        for pane, text in (
            (self.concept_pane, draft.concept),
            (self.story_pane, story_text),
            (self.prompt_pane, draft.image_prompt),
        ):
            pane.set_text(text)
            pane.set_source("", "base")
        self._show_sources(draft)
        self.negative_edit.setText(draft.negative_prompt)
        if draft.seed is not None:
            self.seed_edit.setText(str(draft.seed))
        self.image_panel.reset()
        if draft.image is not None:
            self.image_panel.set_final(pil_to_qimage(draft.image), self._image_caption(draft), image_file)
        title = draft.title or draft.idea
        self.library_banner.setText(
            f"Opened “{title}” from the library (read-only)." if read_only else f"New draft from “{title}”."
        )
        self.library_banner.show()
        self.continue_button.setVisible(read_only)
        self._update_buttons()

    def continue_as_draft(self) -> None:
        if self.draft is not None:
            self.show_story(self.draft, read_only=False)
