"""GUI pieces that need no loaded models: job runner, log view, status bar, image panel, adapter table,
error dialog, window geometry."""

from __future__ import annotations

import logging
import threading
from dataclasses import replace

import pytest
from PIL import Image, PngImagePlugin
from PySide6.QtGui import QImage
from PySide6.QtWidgets import QMessageBox

from app.appearance import app_icon
from app.jobs import JobRunner
from app.log_bridge import LogBridge
from app.models.adapter_table import AdapterTableModel
from app.views.image_panel import ImagePanel
from app.views.log_view import LogView
from app.views.main_window import MainWindow
from app.views.messages import show_error
from app.views.status_bar import StudioStatusBar
from app.workers import pil_to_qimage
from storyloom.settings import Settings
from storyloom.studio import AdapterRow, Studio, StudioStatus

GIB = 1024**3


def test_job_runner_delivers_results_and_errors_on_the_gui_thread(qtbot):
    runner = JobRunner()
    gui_thread = threading.get_ident()
    seen: list[tuple[str, object, int]] = []

    def fail() -> None:
        raise ValueError("bad thing: the reason")

    runner.run(lambda: threading.get_ident(), lambda v: seen.append(("done", v, threading.get_ident())))
    runner.run(fail, None, lambda exc: seen.append(("error", exc, threading.get_ident())))
    qtbot.waitUntil(lambda: len(seen) == 2, timeout=10_000)
    runner.close()
    by_kind = {kind: (value, thread) for kind, value, thread in seen}
    assert by_kind["done"][0] != gui_thread  # the work ran elsewhere...
    assert by_kind["done"][1] == gui_thread  # ...and its result came back here
    assert isinstance(by_kind["error"][0], ValueError) and by_kind["error"][1] == gui_thread
    assert not runner.is_busy


def test_log_view_shows_records_from_any_thread(qtbot):
    view = LogView()
    qtbot.addWidget(view)
    bridge = LogBridge()
    bridge.record_logged.connect(view.append_record)
    logger = logging.getLogger("storyloom.test.gui")
    bridge.install(logger)
    try:
        worker = threading.Thread(target=lambda: logger.warning("from a worker: %s", 42))
        worker.start()
        worker.join()
        logger.debug("too detailed for INFO")
        qtbot.waitUntil(lambda: "from a worker: 42" in view.text.toPlainText(), timeout=5_000)
    finally:
        bridge.uninstall(logger)
    assert "too detailed" not in view.text.toPlainText()
    assert "WARNING" in view.text.toPlainText()


def test_status_bar_shows_device_vram_speed_and_queue(qtbot):
    bar = StudioStatusBar()
    qtbot.addWidget(bar)
    status = StudioStatus(
        ready=True,
        demo=False,
        device_name="NVIDIA GeForce RTX 4070",
        vram_total_bytes=12 * GIB,
        vram_used_bytes=9 * GIB,
        llm_bytes=6 * GIB,
        sdxl_bytes=2 * GIB,
        tokens_per_s=41.25,
        queued_requests=3,
        llm_model_id="Meta-Llama-3-8B-Instruct",
    )
    bar.show_status(status)
    assert bar.device_label.text() == "NVIDIA GeForce RTX 4070"
    assert bar.vram_label.text() == "9.0 GiB / 12.0 GiB"
    assert bar.vram_bar.describe() == "9.0 GiB of 12.0 GiB used — LLM 6.0 GiB, SDXL 2.0 GiB, other 1.0 GiB"
    assert bar.speed_label.text() == "41.2 tok/s"
    assert bar.queue_label.text() == "3 queued"
    assert "Meta-Llama-3-8B-Instruct" in bar.state_label.text()
    bar.show_status(replace(status, llm_parked=True, vram_used_bytes=4 * GIB))  # drawing under the swap plan
    assert bar.vram_bar.describe() == "4.0 GiB of 12.0 GiB used — LLM 0 KiB, SDXL 2.0 GiB, other 2.0 GiB"
    assert "the LLM waits in RAM" in bar.state_label.text()
    bar.show_status(StudioStatus(ready=False, demo=True, error="LLM folder /x: does not exist"))
    assert bar.state_label.text() == "Models failed to load: LLM folder /x: does not exist"


def test_pil_to_qimage_keeps_pixels():
    image = Image.new("RGB", (3, 2), (10, 20, 30))
    image.putpixel((2, 1), (200, 100, 50))
    q = pil_to_qimage(image)
    assert (q.width(), q.height()) == (3, 2)
    assert q.pixelColor(0, 0).getRgb() == (10, 20, 30, 255)
    assert q.pixelColor(2, 1).getRgb() == (200, 100, 50, 255)


def test_image_panel_save_as_keeps_png_parameters(qtbot, tmp_path):
    source = tmp_path / "image.png"
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", '{"seed": 7}')
    Image.new("RGB", (16, 16), (1, 2, 3)).save(source, pnginfo=info)
    panel = ImagePanel()
    qtbot.addWidget(panel)
    with pytest.raises(OSError, match="no finished image"):
        panel.save_to(tmp_path / "nothing.png")
    panel.set_final(QImage(str(source)), "seed 7", source)
    assert panel.save_button.isEnabled()
    panel.save_to(tmp_path / "copy.png")
    with Image.open(tmp_path / "copy.png") as copy:
        assert copy.text["parameters"] == '{"seed": 7}'
    panel.save_to(tmp_path / "copy.jpg")
    assert Image.open(tmp_path / "copy.jpg").size == (16, 16)
    panel.view.zoom_by(2.0)
    assert panel.view.zoom_factor() > 1.0


def _row(**changes) -> AdapterRow:
    values = dict(
        name="noir",
        role="custom",
        description="Hard-boiled prose",
        ranks=(16, 8),
        target_modules=("q_proj", "v_proj"),
        size_bytes=3 * 1024**2,
        sha256="0123456789abcdef" * 4,
        state="gpu",
        enabled=True,
        builtin=False,
        installed=True,
    )
    return AdapterRow(**{**values, **changes})


def test_adapter_table_cells():
    model = AdapterTableModel()
    model.set_rows([_row(), _row(name="story-writer", installed=False, ranks=(), sha256="", state="disk")])
    cells = [[model.index(r, c).data() for c in range(model.columnCount())] for r in range(model.rowCount())]
    assert cells[0] == ["noir", "custom", "8, 16", "q_proj, v_proj", "3 MiB", "0123456789ab", "on GPU slot"]
    assert cells[1][0] == "story-writer" and cells[1][2] == "—" and cells[1][6] == "weights not installed"
    model.set_rows([_row(enabled=False, state="disk")])
    assert model.index(0, 6).data() == "on disk (disabled)"


def test_error_dialog_has_copyable_details(qtbot):
    try:
        raise FileNotFoundError("LLM folder /models/llama: does not exist")
    except FileNotFoundError as exc:
        box = show_error(None, "Could not start", exc)
    qtbot.addWidget(box)
    assert box.text() == "LLM folder /models/llama: does not exist"
    assert "FileNotFoundError" in box.detailedText() and "Traceback" in box.detailedText()
    assert box.icon() == QMessageBox.Icon.Warning


def test_icon_exists(qapp):
    assert not app_icon().isNull()


def test_window_remembers_its_size(qtbot):
    settings = Settings(use_demo_models=True)
    window = MainWindow(Studio(settings), settings)
    qtbot.addWidget(window)
    window.show()
    window.resize(720, 520)  # within the offscreen screen (800x600)
    qtbot.waitUntil(lambda: window.width() == 720, timeout=5_000)
    window.close()
    assert settings.window_geometry
    reloaded = Settings.load()
    assert reloaded.window_geometry == settings.window_geometry
    again = MainWindow(Studio(reloaded), reloaded)
    qtbot.addWidget(again)
    assert (again.width(), again.height()) == (720, 520)
    again.close()


@pytest.mark.parametrize(
    ("seed_text", "expected"),
    [("", "seed: type a number"), ("4294967296", "seed: must be an integer in 0..4294967295")],
)
def test_workspace_refuses_a_bad_fixed_seed_and_starts_nothing(qtbot, seed_text, expected):
    settings = Settings(use_demo_models=True)
    window = MainWindow(Studio(settings), settings)
    qtbot.addWidget(window)
    workspace = window.workspace
    workspace.idea_edit.setPlainText("a fox who collects maps")
    workspace.random_seed.setChecked(False)
    assert workspace.seed_edit.isEnabled()
    workspace.seed_edit.setText(seed_text)
    workspace.generate()
    assert not workspace.is_busy
    assert workspace.message.objectName() == "inlineError"
    assert workspace.message.text().startswith(expected)
    window.close()


def test_entry_points_name_the_gui_main():
    from importlib.metadata import entry_points

    gui = {ep.name: ep.value for ep in entry_points(group="gui_scripts")}
    assert gui.get("storyloom-gui") == "app.main:main"


def test_quitting_the_first_run_dialog_exits_without_writing_settings(qapp, monkeypatch):
    from app import main as app_main
    from storyloom import paths

    shown: list[bool] = []

    def refuse(dialog) -> int:
        shown.append(True)
        return 0

    monkeypatch.setattr(app_main.FirstRunDialog, "exec", refuse)
    assert app_main.main(["storyloom-gui"]) == 0
    assert shown == [True]
    assert not paths.settings_file().exists()


def test_settings_dialog_updates_the_shared_settings_and_saves_them(qtbot):
    settings = Settings(use_demo_models=True)
    studio = Studio(settings)
    window = MainWindow(studio, settings)
    qtbot.addWidget(window)
    dialog = window.open_settings()
    dialog.sampling_fields["story"][0].setValue(0.4)
    plan = dialog.plan_combo.itemData(dialog.plan_combo.count() - 1)
    assert plan is not None, "the VRAM plans are listed before the models load"
    dialog.plan_combo.setCurrentIndex(dialog.plan_combo.count() - 1)
    dialog.accept()
    assert studio.settings is settings and settings.sampling["story"].temperature == pytest.approx(0.4)
    assert settings.vram_plan_override == plan
    saved = Settings.load()
    assert saved.sampling["story"].temperature == pytest.approx(0.4) and saved.vram_plan_override == plan
    window.close()


def test_size_choices_are_the_engines_sdxl_buckets():
    from app.views.story_workspace import IMAGE_SIZES
    from engine.sdxl.params import SDXL_BUCKETS

    assert IMAGE_SIZES[0] is None and IMAGE_SIZES[1:] == SDXL_BUCKETS


def test_the_gui_modules_load_no_torch():
    import subprocess
    import sys

    code = "import sys, app.main, app.screenshots, app.views.main_window\nassert 'torch' not in sys.modules\n"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_models_that_fail_to_load_are_reported_and_block_generate(qtbot, tmp_path):
    settings = Settings(llm_path=tmp_path / "missing-llama", sdxl_path=tmp_path / "missing.safetensors")
    window = MainWindow(Studio(settings), settings)
    qtbot.addWidget(window)
    window.show()
    with qtbot.waitSignal(window.client.load_failed, timeout=60_000):
        window.start()
    dialog = window.findChild(QMessageBox, "errorDialog")
    assert dialog is not None and dialog.isVisible()
    assert "missing-llama" in dialog.text() and "does not exist" in dialog.text()
    window.workspace.idea_edit.setPlainText("an idea")
    assert not window.workspace.generate_button.isEnabled()
    window.poll_status()
    assert window.status.state_label.text().startswith("Models failed to load:")
    window.close()
