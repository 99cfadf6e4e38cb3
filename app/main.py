"""`storyloom-gui`: start the desktop app."""

from __future__ import annotations

import logging
import sys

from PySide6.QtCore import Qt
from PySide6.QtGui import QGuiApplication
from PySide6.QtWidgets import QApplication, QMessageBox

from app.appearance import app_icon, style_sheet
from app.views.first_run import FirstRunDialog, needs_first_run
from app.views.main_window import MainWindow
from app.views.messages import error_details, error_summary
from storyloom.settings import Settings

log = logging.getLogger(__name__)

WINDOWS_APP_ID = "Storyloom.Storyloom"


def make_application(argv: list[str]) -> QApplication:
    """The QApplication (reused if one exists) with Storyloom's name, icon and style; High-DPI scales are
    used as the screen reports them (no rounding)."""
    existing = QApplication.instance()
    if existing is None:
        QGuiApplication.setHighDpiScaleFactorRoundingPolicy(Qt.HighDpiScaleFactorRoundingPolicy.PassThrough)
    app = existing if isinstance(existing, QApplication) else QApplication(argv)
    app.setApplicationName("Storyloom")
    app.setApplicationDisplayName("Storyloom")
    app.setOrganizationName("Storyloom")
    app.setDesktopFileName("storyloom")
    app.setWindowIcon(app_icon())
    app.setStyle("Fusion")
    app.setStyleSheet(style_sheet())
    if sys.platform == "win32":  # own taskbar button and icon instead of python.exe's
        import ctypes

        ctypes.windll.shell32.SetCurrentProcessExplicitAppUserModelID(WINDOWS_APP_ID)
    return app


def _fatal(title: str, exc: BaseException) -> int:
    log.error("%s: %s", title, exc)
    box = QMessageBox(QMessageBox.Icon.Critical, title, error_summary(exc))
    box.setDetailedText(error_details(exc))
    box.exec()
    return 1


def load_settings() -> Settings:
    settings, problem = Settings.load_or_defaults()
    if problem is not None:
        QMessageBox.warning(
            None,
            "Settings reset",
            f"{problem}\n\nStoryloom started with the default settings."
            + (f"\nYour old file was kept as {problem.backup_path}." if problem.backup_path else ""),
        )
    return settings


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    app = make_application(list(sys.argv if argv is None else argv))
    settings = load_settings()
    if needs_first_run(settings):
        dialog = FirstRunDialog(settings)
        if not dialog.exec() or dialog.result_settings() is None:
            return 0
        settings = dialog.result_settings()
        try:
            settings.save()
        except OSError as exc:
            return _fatal("Settings could not be saved", exc)

    from storyloom.studio import Studio  # the facade imports the engine lazily; keep startup light

    try:
        studio = Studio(settings)
    except Exception as exc:
        return _fatal("Storyloom could not start", exc)
    window = MainWindow(studio, settings)
    window.show()
    window.start()
    return app.exec()
