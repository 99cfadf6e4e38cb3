"""The main window: tabs for the story workspace, adapters, compare, library and log; the status bar."""

from __future__ import annotations

import dataclasses
import logging
from typing import TYPE_CHECKING

from PySide6.QtCore import QByteArray, QTimer
from PySide6.QtGui import QAction, QCloseEvent, QKeySequence
from PySide6.QtWidgets import QMainWindow, QMessageBox, QTabWidget, QWidget

from app.appearance import app_icon
from app.jobs import JobRunner
from app.log_bridge import LogBridge
from app.views.adapter_manager import AdapterManager
from app.views.compare_view import CompareView
from app.views.library_view import LibraryView
from app.views.log_view import LogView
from app.views.messages import show_error
from app.views.settings_dialog import SettingsDialog
from app.views.status_bar import StudioStatusBar
from app.views.story_workspace import StoryWorkspace
from app.workers import StudioClient

if TYPE_CHECKING:
    from storyloom.settings import Settings
    from storyloom.studio import Studio, StudioStatus

log = logging.getLogger(__name__)

STATUS_POLL_MS = 1000
DEFAULT_SIZE = (1280, 820)


class MainWindow(QMainWindow):
    """Owns the Studio client for its lifetime; closing the window cancels running jobs and closes the Studio."""

    def __init__(self, studio: Studio, settings: Settings, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.settings = settings
        self.setWindowTitle("Storyloom")
        self.setWindowIcon(app_icon())
        self.client = StudioClient(studio, self)
        self.jobs = JobRunner(self)
        self.log_bridge = LogBridge()
        self.log_view = LogView()
        self.log_bridge.record_logged.connect(self.log_view.append_record)
        self.log_bridge.install()

        self.workspace = StoryWorkspace(self.client)
        self.adapters = AdapterManager(studio, self.jobs)
        self.compare = CompareView(self.client)
        self.library = LibraryView(studio.library, self.jobs)
        self.tabs = QTabWidget()
        self.tabs.setDocumentMode(True)
        self.tabs.addTab(self.workspace, "Story")
        self.tabs.addTab(self.adapters, "Adapters")
        self.tabs.addTab(self.compare, "Compare")
        self.tabs.addTab(self.library, "Library")
        self.tabs.addTab(self.log_view, "Log")
        self.setCentralWidget(self.tabs)
        self.status = StudioStatusBar()
        self.setStatusBar(self.status)

        self.client.ready.connect(self._on_ready)
        self.client.load_failed.connect(self._on_load_failed)
        self.workspace.story_saved.connect(lambda _id: self.library.refresh())
        self.library.open_requested.connect(self._open_story)
        self.adapters.adapters_changed.connect(self.compare.set_adapters)
        self.status_timer = QTimer(self, interval=STATUS_POLL_MS)
        self.status_timer.timeout.connect(self.poll_status)
        self._build_menu()
        self._restore_geometry()
        self._closed = False

    # --- lifecycle ---------------------------------------------------------------------------------------
    def start(self) -> None:
        """Load the models in the background; the views unlock when they are ready."""
        log.info("loading models…")
        self.client.start()
        self.library.refresh()
        self.adapters.refresh()
        self.status_timer.start()
        self.poll_status()

    def poll_status(self) -> None:
        try:
            status = self.client.status()
        except Exception as exc:  # the status must never take the window down
            log.debug("status poll failed: %s", exc)
            return
        self.status.show_status(status)

    def _on_ready(self, status: StudioStatus) -> None:
        log.info("models ready on %s", status.device_name or "the CPU")
        self.workspace.set_ready(True, demo=status.demo)
        self.compare.set_ready(True)
        self.adapters.refresh()
        self.sync_api()
        self.status.show_status(self.client.status())

    def _on_load_failed(self, exc: BaseException) -> None:
        self.workspace.set_ready(False)
        self.compare.set_ready(False)
        self.poll_status()
        show_error(self, "The models could not be loaded", exc)

    def closeEvent(self, event: QCloseEvent) -> None:
        """Cancel running jobs, wait until they settle (nothing is left half-written), save the geometry."""
        if not self._closed:
            self._closed = True
            self.status_timer.stop()
            if self.client.is_busy:
                log.info("window closed while working: cancelling")
            self._save_geometry()
            self.client.close()
            self.jobs.close(wait=True)
            self.log_bridge.uninstall()
        super().closeEvent(event)

    # --- menu --------------------------------------------------------------------------------------------
    def _build_menu(self) -> None:
        file_menu = self.menuBar().addMenu("&File")
        settings_action = QAction("&Settings…", self)
        settings_action.setShortcut(QKeySequence.StandardKey.Preferences)
        settings_action.triggered.connect(self.open_settings)
        quit_action = QAction("&Quit", self)
        quit_action.setShortcut(QKeySequence.StandardKey.Quit)
        quit_action.triggered.connect(self.close)
        file_menu.addAction(settings_action)
        file_menu.addSeparator()
        file_menu.addAction(quit_action)
        help_menu = self.menuBar().addMenu("&Help")
        about_action = QAction("&About Storyloom", self)
        about_action.triggered.connect(self._about)
        help_menu.addAction(about_action)

    def open_settings(self) -> SettingsDialog:
        dialog = SettingsDialog(self.settings, self.client.status(), self)
        dialog.accepted.connect(lambda: self.apply_settings(dialog.result_settings()))
        dialog.open()
        return dialog

    def apply_settings(self, new: Settings | None) -> None:
        """Copy the dialog's result into the shared settings object (the Studio reads it too) and save it."""
        if new is None:
            return
        models_changed = (new.llm_path, new.sdxl_path, new.sdxl_vae_path, new.use_demo_models) != (
            self.settings.llm_path,
            self.settings.sdxl_path,
            self.settings.sdxl_vae_path,
            self.settings.use_demo_models,
        )
        override_changed = new.vram_plan_override != self.settings.vram_plan_override
        api_fields = ("api_enabled", "api_host", "api_port", "api_key")
        api_changed = any(getattr(new, f) != getattr(self.settings, f) for f in api_fields)
        for field in dataclasses.fields(new):
            setattr(self.settings, field.name, getattr(new, field.name))
        try:
            if override_changed:
                self.client.studio.set_vram_override(new.vram_plan_override)
            self.settings.save()
        except Exception as exc:
            show_error(self, "Settings could not be saved", exc)
            return
        log.info("settings saved")
        if api_changed:
            self.client.studio.stop_api()
            self.sync_api()
        if models_changed or override_changed:
            self.status.showMessage("Saved. The new models / VRAM plan apply when Storyloom starts again.", 10000)

    def sync_api(self) -> None:
        """Start or stop the local API to match the settings (once the models are loaded). A failure (port in use,
        a non-loopback host without a key) is shown; the window carries on without the API."""
        studio = self.client.studio
        try:
            if not self.settings.api_enabled:
                studio.stop_api()
            elif studio.is_ready and studio.api_url is None:
                url = studio.start_api()
                log.info("local API serving at %s", url)
                self.status.showMessage(f"Local API at {url}", 10000)
        except Exception as exc:
            show_error(self, "The local API could not start", exc)

    def _about(self) -> None:
        QMessageBox.about(
            self,
            "About Storyloom",
            "Storyloom — stories and illustrations on your PC.\n"
            "One 4-bit Llama-3 with many LoRA adapters in one batch, and a local SDXL.",
        )

    # --- library -> workspace ----------------------------------------------------------------------------
    def _open_story(self, draft, read_only: bool, image_file) -> None:
        if self.workspace.is_busy:
            self.status.showMessage("Stop the running story first.", 5000)
            return
        self.workspace.show_story(draft, read_only, image_file)
        self.tabs.setCurrentWidget(self.workspace)

    # --- geometry ----------------------------------------------------------------------------------------
    def _restore_geometry(self) -> None:
        saved = self.settings.window_geometry
        if saved and self.restoreGeometry(QByteArray.fromBase64(saved.encode("ascii"))):
            return
        self.resize(*DEFAULT_SIZE)

    def _save_geometry(self) -> None:
        self.settings.window_geometry = bytes(self.saveGeometry().toBase64()).decode("ascii")
        try:
            self.settings.save()
        except Exception as exc:
            log.warning("window size not saved: %s", exc)
