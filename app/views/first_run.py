"""First run: no models configured yet — pick real model locations, download them from the Hugging Face hub,
or try the demo models at once."""

from __future__ import annotations

import dataclasses

from PySide6.QtCore import Qt
from PySide6.QtWidgets import QDialog, QGroupBox, QHBoxLayout, QLabel, QPushButton, QVBoxLayout, QWidget

from app.views.model_download import ModelDownloadDialog
from app.views.model_paths import ModelPathsForm
from storyloom.settings import Settings

INTRO = (
    "Storyloom writes a story with a 4-bit Llama-3 and draws its illustration with SDXL, on your GPU.\n"
    "Choose the models you already have on disk or download them, or start with the tiny demo models to look "
    "around (their text is gibberish and their images abstract)."
)


class FirstRunDialog(QDialog):
    """`result_settings()` after `accept()`: the settings with either demo models on or real paths set."""

    def __init__(self, settings: Settings, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("Welcome to Storyloom")
        self.setMinimumWidth(680)
        self._settings = settings
        self._result: Settings | None = None
        title = QLabel("Welcome to Storyloom", objectName="paneTitle")
        intro = QLabel(INTRO, objectName="hint")
        intro.setWordWrap(True)
        self.demo_button = QPushButton("Use demo models", objectName="primary")
        self.demo_button.setToolTip("Create tiny random models in the data folder (once) and start")
        self.demo_button.clicked.connect(self.use_demo_models)
        self.paths = ModelPathsForm()
        self.paths.set_paths(settings)
        self.hub_button = QPushButton("Download from Hugging Face…")
        self.hub_button.setToolTip("Llama 3 8B Instruct and SDXL base 1.0, with their size shown before starting")
        self.hub_button.clicked.connect(self.open_download)
        self.use_button = QPushButton("Use these models")
        self.use_button.clicked.connect(self.use_real_models)
        self.paths.validated.connect(self.use_button.setEnabled)
        self.quit_button = QPushButton("Quit")
        self.quit_button.clicked.connect(self.reject)
        real = QGroupBox("Your models")
        real_layout = QVBoxLayout(real)
        real_layout.addWidget(self.paths)
        real_row = QHBoxLayout()
        real_row.addWidget(self.hub_button)
        real_row.addStretch(1)
        real_row.addWidget(self.use_button)
        real_layout.addLayout(real_row)
        demo = QGroupBox("Just try it")
        demo_layout = QHBoxLayout(demo)
        demo_layout.addWidget(QLabel("Tiny demo models, ready in seconds on any computer."), 1)
        demo_layout.addWidget(self.demo_button)
        bottom = QHBoxLayout()
        bottom.addStretch(1)
        bottom.addWidget(self.quit_button)
        layout = QVBoxLayout(self)
        layout.addWidget(title)
        layout.addWidget(intro)
        layout.addWidget(demo)
        layout.addWidget(real)
        layout.addLayout(bottom)
        self.use_button.setEnabled(self.paths.validate())
        self.demo_button.setFocus(Qt.FocusReason.OtherFocusReason)

    def use_demo_models(self) -> None:
        self._result = dataclasses.replace(self._settings, use_demo_models=True)
        self.accept()

    def use_real_models(self) -> None:
        if not self.paths.validate():
            return
        self._result = dataclasses.replace(
            self._settings,
            llm_path=self.paths.llm_field.path(),
            sdxl_path=self.paths.sdxl_field.path(),
            sdxl_vae_path=self.paths.vae_field.path(),
            use_demo_models=False,
        )
        self.accept()

    @property
    def download_dialog(self) -> ModelDownloadDialog | None:
        return self.paths.download_dialog

    def open_download(self) -> ModelDownloadDialog:
        return self.paths.open_download(self._settings.data_dir)

    def done(self, result: int) -> None:
        self.paths.close_download()
        super().done(result)

    def result_settings(self) -> Settings | None:
        return self._result


def needs_first_run(settings: Settings) -> bool:
    return not settings.use_demo_models and not settings.is_configured
