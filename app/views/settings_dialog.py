"""Settings: model paths (validated on entry), VRAM plan and override, default sampling, data folder, API."""

from __future__ import annotations

import dataclasses
import logging
from typing import TYPE_CHECKING

from PySide6.QtCore import Qt
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QDoubleSpinBox,
    QFormLayout,
    QGridLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QSpinBox,
    QTabWidget,
    QVBoxLayout,
    QWidget,
)

from app.formatting import format_bytes
from app.views.messages import InlineMessage
from app.views.model_paths import ModelPathsForm, PathField
from storyloom.settings import TEXT_STEPS, Settings, StepSampling

if TYPE_CHECKING:
    from storyloom.studio import StudioStatus

log = logging.getLogger(__name__)

AUTOMATIC = "Automatic"
STEP_TITLES = {"concept": "Concept", "story": "Story", "prompt": "Image prompt"}


class SettingsDialog(QDialog):
    """Edits a copy of the settings; `result_settings()` after `accept()` is the validated new value."""

    def __init__(self, settings: Settings, status: StudioStatus | None = None, parent: QWidget | None = None):
        super().__init__(parent)
        self.setWindowTitle("Settings")
        self.setMinimumWidth(640)
        self._original = settings
        self._result: Settings | None = None
        tabs = QTabWidget()
        tabs.addTab(self._models_tab(settings), "Models")
        tabs.addTab(self._vram_tab(settings, status), "VRAM")
        tabs.addTab(self._generation_tab(settings), "Generation")
        tabs.addTab(self._storage_tab(settings), "Storage && API")
        self.tabs = tabs
        self.message = InlineMessage()
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Ok | QDialogButtonBox.StandardButton.Cancel)
        buttons.accepted.connect(self.accept)
        buttons.rejected.connect(self.reject)
        self.ok_button = buttons.button(QDialogButtonBox.StandardButton.Ok)
        layout = QVBoxLayout(self)
        layout.addWidget(tabs, 1)
        layout.addWidget(self.message)
        layout.addWidget(buttons)
        self.paths.validate()

    # --- tabs --------------------------------------------------------------------------------------------
    def done(self, result: int) -> None:
        self.paths.close_download()
        super().done(result)

    def _models_tab(self, settings: Settings) -> QWidget:
        page = QWidget()
        self.paths = ModelPathsForm()
        self.paths.set_paths(settings)
        self.demo_check = QCheckBox("Use the demo models (tiny random models: try the app, output is gibberish)")
        self.demo_check.setChecked(settings.use_demo_models)
        note = QLabel("Model changes take effect the next time Storyloom starts.", objectName="hint")
        self.hub_button = QPushButton("Download from Hugging Face…")
        self.hub_button.setToolTip("Llama 3 8B Instruct and SDXL base 1.0, with their size shown before starting")
        self.hub_button.clicked.connect(lambda: self.paths.open_download(settings.data_dir))
        layout = QVBoxLayout(page)
        layout.addWidget(self.demo_check)
        layout.addWidget(self.paths)
        layout.addWidget(self.hub_button, 0, Qt.AlignmentFlag.AlignLeft)
        layout.addWidget(note)
        layout.addStretch(1)
        return page

    def _vram_tab(self, settings: Settings, status: StudioStatus | None) -> QWidget:
        page = QWidget()
        form = QFormLayout(page)
        self.plan_combo = QComboBox()
        self.plan_combo.addItem(AUTOMATIC, None)
        plans = list(status.available_plans) if status is not None else []
        if settings.vram_plan_override and settings.vram_plan_override not in plans:
            plans.append(settings.vram_plan_override)
        for name in plans:
            self.plan_combo.addItem(name, name)
        self.plan_combo.setCurrentIndex(max(0, self.plan_combo.findData(settings.vram_plan_override)))
        if status is not None and status.ready:
            form.addRow("Device", QLabel(status.device_name or "—"))
            total = format_bytes(status.vram_total_bytes) if status.vram_total_bytes else "—"
            form.addRow("GPU memory", QLabel(total))
            form.addRow("Plan in use", QLabel(status.plan_name or "—"))
            peak = format_bytes(status.plan_estimate_bytes) if status.plan_estimate_bytes else "—"
            form.addRow("Estimated peak", QLabel(peak))
            form.addRow("LLM / SDXL", QLabel(f"{format_bytes(status.llm_bytes)} / {format_bytes(status.sdxl_bytes)}"))
            notes = QLabel("\n".join(status.plan_notes) or "—", objectName="hint")
            notes.setWordWrap(True)
            form.addRow("Notes", notes)
        else:
            form.addRow(QLabel("The plan is computed once the models are loaded.", objectName="hint"))
        form.addRow("Override", self.plan_combo)
        return page

    def _generation_tab(self, settings: Settings) -> QWidget:
        page = QWidget()
        grid = QGridLayout()
        for column, title in enumerate(("", "Temperature", "Top-p", "Max tokens")):
            grid.addWidget(QLabel(title, objectName="hint"), 0, column)
        self.sampling_fields: dict[str, tuple[QDoubleSpinBox, QDoubleSpinBox, QSpinBox]] = {}
        for row, step in enumerate(TEXT_STEPS, start=1):
            values = settings.sampling[step]
            temperature = _double(0.0, 2.0, 0.05, values.temperature)
            top_p = _double(0.01, 1.0, 0.05, values.top_p)
            max_tokens = QSpinBox()
            max_tokens.setRange(1, 32768)
            max_tokens.setValue(values.max_tokens)
            grid.addWidget(QLabel(STEP_TITLES[step]), row, 0)
            for column, widget in enumerate((temperature, top_p, max_tokens), start=1):
                grid.addWidget(widget, row, column)
            self.sampling_fields[step] = (temperature, top_p, max_tokens)
        image = settings.image
        self.width_spin = _int(64, 4096, 8, image.width)
        self.height_spin = _int(64, 4096, 8, image.height)
        self.steps_spin = _int(1, 200, 1, image.steps)
        self.guidance_spin = _double(0.0, 30.0, 0.5, image.guidance)
        image_form = QFormLayout()
        image_form.addRow("Image width", self.width_spin)
        image_form.addRow("Image height", self.height_spin)
        image_form.addRow("Denoising steps", self.steps_spin)
        image_form.addRow("Guidance", self.guidance_spin)
        layout = QVBoxLayout(page)
        layout.addWidget(QLabel("Default sampling per step", objectName="paneTitle"))
        layout.addLayout(grid)
        layout.addWidget(QLabel("Default image", objectName="paneTitle"))
        layout.addLayout(image_form)
        layout.addStretch(1)
        return page

    def _storage_tab(self, settings: Settings) -> QWidget:
        page = QWidget()
        self.data_dir_field = PathField("Folder for the library, adapters and demo models")
        self.data_dir_field.set_path(settings.data_dir)
        self.api_check = QCheckBox("Serve the local OpenAI-compatible API")
        self.api_check.setChecked(settings.api_enabled)
        self.api_host = QLineEdit(settings.api_host)
        self.api_port = _int(1, 65535, 1, settings.api_port)
        form = QFormLayout(page)
        form.addRow("Data folder", self.data_dir_field)
        form.addRow(self.api_check)
        form.addRow("API host", self.api_host)
        form.addRow("API port", self.api_port)
        return page

    # --- result ------------------------------------------------------------------------------------------
    def build_settings(self) -> Settings:
        """The edited settings; raises ValueError naming every bad value."""
        problems = [] if self.demo_check.isChecked() else self.paths.problems()  # empty paths are problems too
        if problems:
            raise ValueError("\n".join(problems))
        sampling = {
            step: StepSampling(temperature=t.value(), top_p=p.value(), max_tokens=m.value())
            for step, (t, p, m) in self.sampling_fields.items()
        }
        image = dataclasses.replace(
            self._original.image,
            width=self.width_spin.value(),
            height=self.height_spin.value(),
            steps=self.steps_spin.value(),
            guidance=self.guidance_spin.value(),
        )
        data_dir = self.data_dir_field.path()
        if data_dir is None:
            raise ValueError("data folder: choose a folder for the library")
        return dataclasses.replace(
            self._original,
            llm_path=self.paths.llm_field.path(),
            sdxl_path=self.paths.sdxl_field.path(),
            sdxl_vae_path=self.paths.vae_field.path(),
            use_demo_models=self.demo_check.isChecked(),
            vram_plan_override=self.plan_combo.currentData(),
            sampling=sampling,
            image=image,
            data_dir=data_dir,
            api_enabled=self.api_check.isChecked(),
            api_host=self.api_host.text().strip(),
            api_port=self.api_port.value(),
        )

    def accept(self) -> None:
        try:
            self._result = self.build_settings()
        except ValueError as exc:
            self.message.show_error(str(exc))
            return
        super().accept()

    def result_settings(self) -> Settings | None:
        return self._result


def _double(low: float, high: float, step: float, value: float) -> QDoubleSpinBox:
    spin = QDoubleSpinBox()
    spin.setRange(low, high)
    spin.setSingleStep(step)
    spin.setDecimals(2)
    spin.setValue(value)
    return spin


def _int(low: int, high: int, step: int, value: int) -> QSpinBox:
    spin = QSpinBox()
    spin.setRange(low, high)
    spin.setSingleStep(step)
    spin.setValue(value)
    return spin
