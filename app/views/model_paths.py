"""The model-location fields (LLM folder, SDXL folder or file, optional VAE), validated as they are edited.

Shared by the settings dialog and the first-run dialog.
"""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import Signal
from PySide6.QtWidgets import (
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLineEdit,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from app.views.messages import InlineMessage
from app.views.model_download import ModelDownloadDialog
from storyloom.settings import Settings

SAFETENSORS_FILTER = "SDXL checkpoint (*.safetensors)"
# Problem prefixes from Settings.validate_model_paths -> the field they belong to.
FIELD_PREFIXES = {"llm": ("LLM",), "sdxl": ("SDXL checkpoint", "SDXL:"), "vae": ("SDXL VAE",)}


class PathField(QWidget):
    """A line edit with Browse buttons (folder, and optionally file)."""

    changed = Signal()

    def __init__(self, placeholder: str, file_filter: str | None = None, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.edit = QLineEdit()
        self.edit.setPlaceholderText(placeholder)
        self.edit.setClearButtonEnabled(True)
        self.edit.textChanged.connect(self.changed)
        self.folder_button = QPushButton("Folder…")
        self.folder_button.clicked.connect(self._pick_folder)
        layout = QHBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.edit, 1)
        layout.addWidget(self.folder_button)
        self._filter = file_filter
        if file_filter:
            self.file_button = QPushButton("File…")
            self.file_button.clicked.connect(self._pick_file)
            layout.addWidget(self.file_button)

    def path(self) -> Path | None:
        text = self.edit.text().strip()
        return Path(text).expanduser() if text else None

    def set_path(self, path: Path | None) -> None:
        self.edit.setText("" if path is None else str(path))

    def set_invalid(self, invalid: bool, reason: str = "") -> None:
        self.edit.setProperty("invalid", invalid)
        self.edit.setToolTip(reason)
        self.edit.style().unpolish(self.edit)
        self.edit.style().polish(self.edit)

    def _pick_folder(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Choose a folder", self.edit.text())
        if folder:
            self.edit.setText(folder)

    def _pick_file(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Choose a file", self.edit.text(), self._filter or "")
        if path:
            self.edit.setText(path)


class ModelPathsForm(QWidget):
    """The three model paths; `problems()` re-checks them with `Settings.validate_model_paths`."""

    validated = Signal(bool)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.llm_field = PathField("Llama-3 folder (config.json, tokenizer.json, *.safetensors)")
        self.sdxl_field = PathField("SDXL folder (model_index.json) or single .safetensors", SAFETENSORS_FILTER)
        self.vae_field = PathField("Optional: a separate SDXL VAE (folder or .safetensors)", SAFETENSORS_FILTER)
        self.message = InlineMessage()
        form = QFormLayout()
        form.addRow("LLM", self.llm_field)
        form.addRow("SDXL", self.sdxl_field)
        form.addRow("VAE", self.vae_field)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addLayout(form)
        layout.addWidget(self.message)
        self._fields = {"llm": self.llm_field, "sdxl": self.sdxl_field, "vae": self.vae_field}
        for field in self._fields.values():
            field.changed.connect(self.validate)
        self.download_dialog: ModelDownloadDialog | None = None

    def open_download(self, data_dir: Path) -> ModelDownloadDialog:
        """Show the hub download window (one per form, kept so a cancelled download can resume); finished
        downloads fill the fields."""
        if self.download_dialog is None:
            self.download_dialog = ModelDownloadDialog(data_dir, parent=self.window())
            self.download_dialog.panel.downloaded.connect(self.use_downloaded)
        self.download_dialog.show()
        self.download_dialog.raise_()
        return self.download_dialog

    def use_downloaded(self, locations: dict[str, Path]) -> None:
        fields = {"llm": self.llm_field, "sdxl": self.sdxl_field}
        for role, path in locations.items():
            fields[role].set_path(path)

    def close_download(self) -> None:
        """Stop a running download (its partial files stay for a later resume) and close its window."""
        if self.download_dialog is not None:
            self.download_dialog.panel.shutdown()
            self.download_dialog.close()

    def set_paths(self, settings: Settings) -> None:
        self.llm_field.set_path(settings.llm_path)
        self.sdxl_field.set_path(settings.sdxl_path)
        self.vae_field.set_path(settings.sdxl_vae_path)

    def apply_to(self, settings: Settings) -> None:
        settings.llm_path = self.llm_field.path()
        settings.sdxl_path = self.sdxl_field.path()
        settings.sdxl_vae_path = self.vae_field.path()

    def problems(self) -> list[str]:
        probe = Settings(
            llm_path=self.llm_field.path(), sdxl_path=self.sdxl_field.path(), sdxl_vae_path=self.vae_field.path()
        )
        return probe.validate_model_paths()

    def validate(self) -> bool:
        """Check the paths and show every problem; an empty form shows nothing (nothing typed yet)."""
        if all(field.path() is None for field in self._fields.values()):
            for field in self._fields.values():
                field.set_invalid(False)
            self.message.clear_message()
            self.validated.emit(False)
            return False
        problems = self.problems()
        for key, field in self._fields.items():
            mine = [p for p in problems if p.startswith(FIELD_PREFIXES[key])]
            field.set_invalid(bool(mine) and field.path() is not None, "\n".join(mine))
        if problems:
            self.message.show_error("\n".join(problems))
        else:
            self.message.show_info("These models look usable.")
        self.validated.emit(not problems)
        return not problems
