"""The image panel: render progress, live previews, the final image (zoomable, save-as)."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QImage, QPainter, QPixmap, QWheelEvent
from PySide6.QtWidgets import (
    QFileDialog,
    QGraphicsPixmapItem,
    QGraphicsScene,
    QGraphicsView,
    QHBoxLayout,
    QLabel,
    QProgressBar,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

log = logging.getLogger(__name__)

ZOOM_STEP = 1.25


class ImageView(QGraphicsView):
    """Shows one image; Ctrl+wheel zooms, drag pans; fits the view until the user zooms."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("imageArea")
        self._scene = QGraphicsScene(self)
        self._item = QGraphicsPixmapItem()
        self._item.setTransformationMode(Qt.TransformationMode.SmoothTransformation)
        self._scene.addItem(self._item)
        self.setScene(self._scene)
        self.setRenderHint(QPainter.RenderHint.SmoothPixmapTransform)
        self.setDragMode(QGraphicsView.DragMode.ScrollHandDrag)
        self.setTransformationAnchor(QGraphicsView.ViewportAnchor.AnchorUnderMouse)
        self.setMinimumSize(160, 160)
        self._fit = True

    def set_image(self, image: QImage) -> None:
        self._item.setPixmap(QPixmap.fromImage(image))
        self._scene.setSceneRect(self._item.boundingRect())
        if self._fit:
            self.fit()

    def clear(self) -> None:
        self._item.setPixmap(QPixmap())
        self._scene.setSceneRect(0, 0, 0, 0)

    def has_image(self) -> bool:
        return not self._item.pixmap().isNull()

    def zoom_factor(self) -> float:
        return self.transform().m11()

    def zoom_by(self, factor: float) -> None:
        self._fit = False
        self.scale(factor, factor)

    def zoom_actual(self) -> None:
        self._fit = False
        self.resetTransform()

    def fit(self) -> None:
        self._fit = True
        if self.has_image():
            self.fitInView(self._item, Qt.AspectRatioMode.KeepAspectRatio)

    def wheelEvent(self, event: QWheelEvent) -> None:
        if event.modifiers() & Qt.KeyboardModifier.ControlModifier:
            self.zoom_by(ZOOM_STEP if event.angleDelta().y() > 0 else 1 / ZOOM_STEP)
            event.accept()
        else:
            super().wheelEvent(event)

    def resizeEvent(self, event) -> None:
        super().resizeEvent(event)
        if self._fit:
            self.fit()


class ImagePanel(QWidget):
    """Progress bar + image view + zoom and save-as buttons."""

    save_failed = Signal(str)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.view = ImageView()
        self.progress = QProgressBar()
        self.progress.setRange(0, 1)
        self.progress.setValue(0)
        self.progress.setFormat("No image yet")
        self.caption = QLabel("", objectName="hint")
        self.caption.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.fit_button = QPushButton("Fit")
        self.actual_button = QPushButton("100%")
        self.zoom_in_button = QPushButton("+")
        self.zoom_out_button = QPushButton("−")
        self.save_button = QPushButton("Save as…")
        self.save_button.setEnabled(False)
        self.fit_button.clicked.connect(self.view.fit)
        self.actual_button.clicked.connect(self.view.zoom_actual)
        self.zoom_in_button.clicked.connect(lambda: self.view.zoom_by(ZOOM_STEP))
        self.zoom_out_button.clicked.connect(lambda: self.view.zoom_by(1 / ZOOM_STEP))
        self.save_button.clicked.connect(self._ask_save)
        tools = QHBoxLayout()
        for button in (self.zoom_out_button, self.zoom_in_button, self.fit_button, self.actual_button):
            button.setMinimumWidth(56)
            tools.addWidget(button)
        tools.addStretch(1)
        tools.addWidget(self.save_button)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(QLabel("Image", objectName="paneTitle"))
        layout.addWidget(self.progress)
        layout.addWidget(self.view, 1)
        layout.addWidget(self.caption)
        layout.addLayout(tools)
        self._final: QImage | None = None
        self._source: Path | None = None

    def start(self, total_steps: int) -> None:
        self._final = None
        self._source = None
        self.save_button.setEnabled(False)
        self.progress.setRange(0, max(1, total_steps))
        self.progress.setValue(0)
        self.progress.setFormat("Drawing… step %v of %m")

    def wait(self, text: str) -> None:
        """Show that the image waits for something (the prompt, the VRAM plan)."""
        self.progress.setRange(0, 0)
        self.progress.setFormat(text)

    def set_progress(self, step: int, total: int, preview: QImage | None) -> None:
        self.progress.setRange(0, max(1, total))
        self.progress.setValue(step)
        self.progress.setFormat("Drawing… step %v of %m")
        if preview is not None and not preview.isNull():
            self.view.set_image(preview)

    def set_final(self, image: QImage, caption: str = "", source: Path | None = None) -> None:
        """Show the finished image; `source` is its PNG on disk (Save as copies it: text chunks kept)."""
        self._final = image
        self._source = source
        self.view.set_image(image)
        self.progress.setRange(0, 1)
        self.progress.setValue(1)
        self.progress.setFormat(f"Done — {image.width()}×{image.height()}")
        self.caption.setText(caption)
        self.save_button.setEnabled(True)

    def set_source(self, source: Path | None) -> None:
        """The shown image's PNG on disk (Save as copies it, keeping its generation parameters)."""
        self._source = source

    def set_stopped(self, text: str) -> None:
        self.progress.setRange(0, 1)
        self.progress.setValue(0)
        self.progress.setFormat(text)

    def reset(self) -> None:
        self._final = None
        self._source = None
        self.view.clear()
        self.caption.clear()
        self.save_button.setEnabled(False)
        self.progress.setRange(0, 1)
        self.progress.setValue(0)
        self.progress.setFormat("No image yet")

    def final_image(self) -> QImage | None:
        return self._final

    def save_to(self, path: Path) -> None:
        """Save the final image; PNG keeps full quality. Raises OSError with the path on failure."""
        if self._final is None:
            raise OSError("there is no finished image to save")
        if self._source is not None and self._source.is_file() and path.suffix.lower() == ".png":
            shutil.copyfile(self._source, path)
        elif not self._final.save(str(path)):
            raise OSError(f"could not write the image to {path}")
        log.info("image saved to %s", path)

    def _ask_save(self) -> None:
        path, _ = QFileDialog.getSaveFileName(self, "Save image", "storyloom.png", "PNG image (*.png);;JPEG (*.jpg)")
        if not path:
            return
        try:
            self.save_to(Path(path))
        except OSError as exc:
            self.save_failed.emit(str(exc))
