"""Render the main views of the real app on the demo models into docs/screenshots/*.png.

    python -m app.screenshots [--out docs/screenshots]

Runs offscreen with its own temporary config and data folders, so the user's settings and library are
never touched. Each PNG is kept under MAX_PNG_BYTES (scaled down if needed).
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from PIL import Image

log = logging.getLogger(__name__)

MAX_PNG_BYTES = 300 * 1024
WINDOW_SIZE = (1280, 800)
IDEAS = ("a clockmaker who repairs broken promises", "a lighthouse keeper who befriends a storm")
COMPARE_PROMPT = "Describe a lighthouse at night in two sentences."
TIMEOUT_S = 900.0


def wait_until(condition: Callable[[], bool], timeout_s: float = TIMEOUT_S) -> None:
    from PySide6.QtCore import QEventLoop
    from PySide6.QtWidgets import QApplication

    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("the app did not reach the expected state in time")
        QApplication.processEvents(QEventLoop.ProcessEventsFlag.AllEvents, 50)
        time.sleep(0.01)


def save_png(widget, path: Path) -> Path:
    """Grab `widget` into `path`, scaling down until the file is under MAX_PNG_BYTES."""
    from PySide6.QtWidgets import QApplication

    QApplication.processEvents()
    widget.grab().save(str(path), "PNG")
    if path.stat().st_size > MAX_PNG_BYTES:  # a noisy demo image: a 256-colour palette keeps the UI crisp
        with Image.open(path) as image:
            image.convert("RGB").quantize(256, dither=Image.Dither.NONE).save(path, optimize=True)
    while path.stat().st_size > MAX_PNG_BYTES:
        with Image.open(path) as image:
            smaller = image.convert("RGB").resize((image.width * 9 // 10, image.height * 9 // 10), Image.LANCZOS)
        smaller.save(path, optimize=True)
    log.info("wrote %s (%d KiB)", path, path.stat().st_size // 1024)
    return path


def render_all(out: Path) -> list[Path]:
    from app.main import make_application
    from app.views.first_run import FirstRunDialog
    from app.views.main_window import MainWindow
    from app.views.settings_dialog import SettingsDialog
    from storyloom.settings import ImageDefaults, Settings
    from storyloom.studio import Studio

    app = make_application(["storyloom-screenshots"])
    out.mkdir(parents=True, exist_ok=True)
    shots: list[Path] = []

    first_run = FirstRunDialog(Settings())
    first_run.resize(760, 460)
    first_run.show()
    shots.append(save_png(first_run, out / "first-run.png"))
    first_run.close()

    settings = Settings(use_demo_models=True, image=ImageDefaults(steps=8))
    window = MainWindow(Studio(settings), settings)
    window.resize(*WINDOW_SIZE)
    window.show()
    loaded: list[object] = []
    window.client.ready.connect(loaded.append)
    window.client.load_failed.connect(loaded.append)
    window.start()
    wait_until(lambda: bool(loaded))
    if isinstance(loaded[0], BaseException):
        raise loaded[0]
    for idea in IDEAS:
        window.workspace.idea_edit.setPlainText(idea)
        window.workspace.generate()
        wait_until(lambda: not window.workspace.is_busy)
    window.poll_status()
    shots.append(save_png(window, out / "story.png"))

    window.tabs.setCurrentWidget(window.adapters)
    wait_until(lambda: window.adapters.model.rowCount() > 0)
    window.adapters.table.selectRow(0)
    shots.append(save_png(window, out / "adapters.png"))

    window.tabs.setCurrentWidget(window.compare)
    window.compare.set_checked([None, *[r.name for r in window.adapters.model.rows() if r.installed]])
    window.compare.prompt_edit.setPlainText(COMPARE_PROMPT)
    window.compare.max_tokens.setValue(48)
    window.compare.run()
    wait_until(lambda: window.compare.relay is None)
    shots.append(save_png(window, out / "compare.png"))

    window.tabs.setCurrentWidget(window.library)
    window.library.refresh()
    wait_until(lambda: all(window.library.model.has_thumbnail(s.id) for s in window.library.model.stories()))
    shots.append(save_png(window, out / "library.png"))

    dialog = SettingsDialog(settings, window.client.status(), window)
    dialog.resize(720, 520)
    dialog.show()
    shots.append(save_png(dialog, out / "settings.png"))
    dialog.tabs.setCurrentIndex(1)
    shots.append(save_png(dialog, out / "settings-vram.png"))
    dialog.reject()

    window.tabs.setCurrentWidget(window.log_view)
    shots.append(save_png(window, out / "log.png"))
    window.close()
    app.processEvents()
    return shots


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("docs/screenshots"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    with tempfile.TemporaryDirectory(prefix="storyloom-shots-") as home:
        os.environ["STORYLOOM_CONFIG_DIR"] = str(Path(home) / "config")
        os.environ["STORYLOOM_DATA_DIR"] = str(Path(home) / "data")
        for path in render_all(args.out):
            print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
