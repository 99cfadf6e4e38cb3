"""The hub download panel and the first-run dialog against a local fake hub (127.0.0.1, never the network):
size before download, progress, cancel then resume, checksum and gated errors, settings pointing at the files."""

from __future__ import annotations

import random
import shutil
from collections import namedtuple
from functools import partial

import pytest
from PySide6.QtCore import Qt
from PySide6.QtGui import QGuiApplication

from app.views.first_run import FirstRunDialog
from app.views.model_download import PROGRESS_STEPS, ModelDownloadPanel, OverallProgress, ProgressThrottle
from app.views.settings_dialog import SettingsDialog
from storyloom.downloads import DownloadManager, DownloadProgress
from storyloom.settings import Settings
from tests.test_downloads_hub import (
    LLAMA,
    SDXL,
    TOKEN,
    WANTED_LLAMA,
    llama_files,
    publish,
)

CHUNK = 4096
SHARD = "model-00001-of-00002.safetensors"
CHECKPOINT = "sd_xl_base_1.0.safetensors"
WAIT_MS = 30_000
Usage = namedtuple("Usage", "total used free")


@pytest.fixture
def served(hub):
    """Both models on the fake hub; Llama gated behind TOKEN. Returns {repo path: bytes} per model."""
    llama = {**llama_files(), "config.json": b'{"model_type": "llama"}'}
    publish(hub, LLAMA, llama, lfs={p for p in llama if p.endswith((".safetensors", ".pth", ".bin"))})
    hub.gated[f"/{LLAMA}/resolve/"] = {TOKEN}
    sdxl = {CHECKPOINT: random.Random(4).randbytes(100_000)}
    publish(hub, SDXL, sdxl, lfs={CHECKPOINT})
    return {"llm": {p: llama[p] for p in WANTED_LLAMA}, "sdxl": sdxl}


@pytest.fixture
def panel(hub, qtbot, tmp_path):
    widget = ModelDownloadPanel(
        tmp_path / "data",
        endpoint=hub.url(""),
        manager_factory=partial(DownloadManager, chunk_size=CHUNK, retry_delay_s=0.0),
    )
    qtbot.addWidget(widget)
    widget.show()
    yield widget
    widget.shutdown()


def click_and_wait(qtbot, panel, button) -> None:
    qtbot.mouseClick(button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: not panel.is_busy, timeout=WAIT_MS)


def watch_reports(monkeypatch, panel, on_worker=lambda p: None) -> list:
    """Record the progress reports the worker thread sends, and run `on_worker` there on each."""
    reports = []
    forward = panel.relay.report

    def report(p) -> None:
        reports.append(p)
        on_worker(p)
        forward(p)

    monkeypatch.setattr(panel.relay, "report", report)
    return reports


def total_bytes(served) -> int:
    return sum(len(data) for files in served.values() for data in files.values())


def test_check_lists_files_total_and_free_disk_before_downloading(qtbot, panel, served, hub):
    assert "Meta's Llama 3 Community License" in panel.token_hint.text()
    assert not panel.download_button.isEnabled()
    panel.token_edit.setText(TOKEN)
    click_and_wait(qtbot, panel, panel.check_button)

    text = panel.plan_view.toPlainText()
    assert panel.plan_view.isVisible() and panel.download_button.isEnabled()
    assert f"Total {total_bytes(served) // 1024} KiB ({total_bytes(served):,} bytes)" in text
    assert all(path in text for files in served.values() for path in files)
    assert "original/" not in text and "pytorch_model.bin" not in text
    assert f"free disk in {panel.models_dir}" in text
    assert not [r for r in hub.requests if r.method == "GET" and "/resolve/" in r.path]
    assert not panel.models_dir.exists()

    panel.token_edit.setText("hf_other")  # a changed token needs a new Check
    assert not panel.download_button.isEnabled() and not panel.plan_view.isVisible()


def test_download_moves_the_bar_and_reports_the_locations(qtbot, panel, served, monkeypatch):
    panel.token_edit.setText(TOKEN)
    click_and_wait(qtbot, panel, panel.check_button)
    bar_values: list[int] = []
    statuses: list[str] = []
    panel.progress_bar.valueChanged.connect(
        lambda v: (bar_values.append(v), statuses.append(panel.status_label.text()))
    )
    reports = watch_reports(monkeypatch, panel)

    with qtbot.waitSignal(panel.downloaded, timeout=WAIT_MS) as blocker:
        qtbot.mouseClick(panel.download_button, Qt.MouseButton.LeftButton)
        assert panel.cancel_button.isEnabled() and not panel.check_button.isEnabled()

    llm_dir, sdxl_dir = panel.models_dir / "llama-3-8b-instruct", panel.models_dir / "sdxl-base"
    assert blocker.args == [{"llm": llm_dir, "sdxl": sdxl_dir / CHECKPOINT}]
    assert all((llm_dir / p).read_bytes() == data for p, data in served["llm"].items())
    assert (sdxl_dir / CHECKPOINT).read_bytes() == served["sdxl"][CHECKPOINT]
    qtbot.waitUntil(lambda: bar_values and bar_values[-1] == PROGRESS_STEPS, timeout=WAIT_MS)
    assert len(bar_values) > 10 and bar_values == sorted(bar_values)
    done = [r.bytes_done for r in reports]
    assert done == sorted(done) and done[-1] == total_bytes(served)
    assert {r.title for r in reports} == {"Llama 3 8B Instruct", "Stable Diffusion XL base 1.0"}
    assert any(SHARD in s and "/s" in s and " of " in s for s in statuses)
    assert panel.message.objectName() == "inlineInfo" and str(llm_dir) in panel.message.text()
    assert not panel.cancel_button.isEnabled() and panel.download_button.isEnabled()


def test_cancel_keeps_the_partial_file_and_the_next_download_resumes(qtbot, panel, served, hub, monkeypatch):
    panel.model_checks["sdxl"].setChecked(False)
    panel.token_edit.setText(TOKEN)
    click_and_wait(qtbot, panel, panel.check_button)
    armed = [True]

    def cancel_mid_shard(p) -> None:  # runs on the worker thread, as a press of Cancel would land there
        if armed[0] and p.current.file == SHARD and p.current.file_bytes_done < p.current.file_bytes_total:
            panel.cancel_requested.set()

    watch_reports(monkeypatch, panel, on_worker=cancel_mid_shard)
    click_and_wait(qtbot, panel, panel.download_button)

    llm_dir = panel.models_dir / "llama-3-8b-instruct"
    part = llm_dir / f"{SHARD}.part"
    assert "cancelled" in panel.message.text() and panel.message.objectName() == "inlineInfo"
    assert part.is_file() and 0 < part.stat().st_size < len(served["llm"][SHARD])
    assert not (llm_dir / SHARD).exists() and panel.download_button.isEnabled()
    kept = part.stat().st_size

    armed[0] = False
    with qtbot.waitSignal(panel.downloaded, timeout=WAIT_MS):
        qtbot.mouseClick(panel.download_button, Qt.MouseButton.LeftButton)
    assert (llm_dir / SHARD).read_bytes() == served["llm"][SHARD] and not part.exists()
    ranges = [r.range for r in hub.gets(f"/{LLAMA}/resolve/main/{SHARD}")]
    assert ranges == [None, f"bytes={kept}-"]


def test_checksum_failure_is_shown_with_copyable_details(qtbot, panel, served, hub):
    damaged = bytes(b ^ 1 for b in served["sdxl"][CHECKPOINT])  # same size, other bytes
    hub.files[f"/{SDXL}/resolve/main/{CHECKPOINT}"] = damaged
    panel.model_checks["llm"].setChecked(False)
    click_and_wait(qtbot, panel, panel.check_button)
    click_and_wait(qtbot, panel, panel.download_button)

    text = panel.message.text()
    assert panel.message.objectName() == "inlineError"
    assert text.startswith("Download failed:") and CHECKPOINT in text and "sha256 mismatch" in text
    sdxl_dir = panel.models_dir / "sdxl-base"
    assert not (sdxl_dir / CHECKPOINT).exists() and not (sdxl_dir / f"{CHECKPOINT}.part").exists()
    assert panel.copy_button.isVisible()
    qtbot.mouseClick(panel.copy_button, Qt.MouseButton.LeftButton)
    copied = QGuiApplication.clipboard().text()
    assert copied == panel.error_details and "ChecksumError" in copied and "Traceback" in copied


def test_gated_llama_explains_the_license_and_the_token(qtbot, panel, served):
    click_and_wait(qtbot, panel, panel.check_button)
    text = panel.message.text()
    assert panel.message.objectName() == "inlineError" and text.startswith("Check failed:")
    assert "HTTP 401" in text and "No Hugging Face token" in text
    assert "Meta's Llama 3 Community License" in text and "settings/tokens" in text
    assert not panel.download_button.isEnabled() and panel.copy_button.isVisible()

    panel.token_edit.setText("hf_not_granted")
    click_and_wait(qtbot, panel, panel.check_button)
    assert "HTTP 403" in panel.message.text() and "must be accepted on" in panel.message.text()
    assert not panel.download_button.isEnabled()


def test_disk_full_is_shown_at_check_and_refused_at_download(qtbot, panel, served, monkeypatch):
    monkeypatch.setattr(shutil, "disk_usage", lambda path: Usage(10**12, 10**12 - 5000, 5000))
    panel.model_checks["llm"].setChecked(False)
    click_and_wait(qtbot, panel, panel.check_button)
    assert panel.message.objectName() == "inlineError" and "Not enough disk space" in panel.message.text()

    click_and_wait(qtbot, panel, panel.download_button)
    text = panel.message.text()
    assert panel.message.objectName() == "inlineError" and "not enough disk space in" in text
    assert "GB free" in text and not (panel.models_dir / "sdxl-base" / CHECKPOINT).exists()


def test_first_run_download_then_use_these_models(qtbot, hub, served, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", hub.url(""))
    data_dir = tmp_path / "data"
    dialog = FirstRunDialog(Settings(data_dir=data_dir))
    qtbot.addWidget(dialog)
    dialog.show()
    assert not dialog.use_button.isEnabled()
    qtbot.mouseClick(dialog.hub_button, Qt.MouseButton.LeftButton)
    assert dialog.download_dialog is not None and dialog.download_dialog.isVisible()
    assert hub.requests == []  # nothing touches the network until asked
    panel = dialog.download_dialog.panel
    assert panel.models_dir == data_dir / "models"

    panel.token_edit.setText(TOKEN)
    click_and_wait(qtbot, panel, panel.check_button)
    with qtbot.waitSignal(panel.downloaded, timeout=WAIT_MS):
        qtbot.mouseClick(panel.download_button, Qt.MouseButton.LeftButton)
    assert dialog.use_button.isEnabled()
    with qtbot.waitSignal(dialog.accepted, timeout=WAIT_MS):
        qtbot.mouseClick(dialog.use_button, Qt.MouseButton.LeftButton)

    result = dialog.result_settings()
    assert result is not None and not result.use_demo_models
    assert result.llm_path == data_dir / "models" / "llama-3-8b-instruct"
    assert result.sdxl_path == data_dir / "models" / "sdxl-base" / CHECKPOINT
    assert result.validate_model_paths() == []


def test_settings_dialog_offers_the_download_and_fills_its_fields(qtbot, hub, served, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", hub.url(""))
    data_dir = tmp_path / "data"
    dialog = SettingsDialog(Settings(data_dir=data_dir), None)
    qtbot.addWidget(dialog)
    dialog.show()
    qtbot.mouseClick(dialog.hub_button, Qt.MouseButton.LeftButton)
    panel = dialog.paths.download_dialog.panel
    assert panel.models_dir == data_dir / "models" and hub.requests == []
    panel.token_edit.setText(TOKEN)
    click_and_wait(qtbot, panel, panel.check_button)
    with qtbot.waitSignal(panel.downloaded, timeout=WAIT_MS):
        qtbot.mouseClick(panel.download_button, Qt.MouseButton.LeftButton)
    assert dialog.paths.llm_field.path() == data_dir / "models" / "llama-3-8b-instruct"
    assert dialog.paths.sdxl_field.path() == data_dir / "models" / "sdxl-base" / CHECKPOINT
    dialog.reject()
    assert not dialog.paths.download_dialog.isVisible()


def test_progress_throttle_passes_steps_file_changes_the_end_and_slow_updates():
    passed = []
    now = [0.0]
    throttle = ProgressThrottle(passed.append, steps=10, interval_s=1.0, clock=lambda: now[0])

    def progress(file: str, done: int, total: int = 1000) -> OverallProgress:
        return OverallProgress("m", done, total, DownloadProgress(file, done, total, done, total, 1.0))

    for done in range(1, 1001):  # one report per byte, instantly: only the 10 steps, the first and the end
        throttle(progress("a", done))
    assert [p.bytes_done for p in passed] == [1, 100, 200, 300, 400, 500, 600, 700, 800, 900, 1000]
    passed.clear()
    throttle(progress("b", 1000))  # another file, same step
    throttle(progress("b", 1000))  # the end is always passed on
    now[0] += 1.0
    throttle(progress("b", 1000))
    assert len(passed) == 3
    passed.clear()
    for done in (1, 2, 3):
        throttle(progress("c", done, total=10**9))
    now[0] += 1.0
    throttle(progress("c", 4, total=10**9))  # no step moved, but the interval passed
    assert [p.bytes_done for p in passed] == [1, 4]


def test_quitting_first_run_mid_download_cancels_and_waits_for_the_worker(qtbot, hub, served, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", hub.url(""))
    dialog = FirstRunDialog(Settings(data_dir=tmp_path / "data"))
    qtbot.addWidget(dialog)
    dialog.show()
    panel = dialog.open_download().panel
    panel.model_checks["sdxl"].setChecked(False)
    panel.token_edit.setText(TOKEN)
    click_and_wait(qtbot, panel, panel.check_button)
    resumed = []

    def stall(p) -> None:  # on the worker: a slow network, until Cancel is requested
        resumed.append(panel.cancel_requested.wait(WAIT_MS / 1000))

    reports = watch_reports(monkeypatch, panel, on_worker=stall)
    qtbot.mouseClick(panel.download_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: len(reports) > 0, timeout=WAIT_MS)

    with qtbot.waitSignal(dialog.rejected, timeout=WAIT_MS):
        qtbot.mouseClick(dialog.quit_button, Qt.MouseButton.LeftButton)
    assert dialog.result_settings() is None and not dialog.download_dialog.isVisible()
    assert resumed == [True]  # Quit requested the cancel and waited until the worker went on from the stall
    llm_dir = panel.models_dir / "llama-3-8b-instruct"
    assert [p.name for p in llm_dir.iterdir()] == ["config.json"]  # the file in flight ends; no other starts


def test_closing_the_download_window_cancels_and_reopening_keeps_the_check(qtbot, hub, served, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", hub.url(""))
    dialog = FirstRunDialog(Settings(data_dir=tmp_path / "data"))
    qtbot.addWidget(dialog)
    dialog.show()
    window = dialog.open_download()
    panel = window.panel
    panel.model_checks["llm"].setChecked(False)
    click_and_wait(qtbot, panel, panel.check_button)
    watch_reports(monkeypatch, panel, on_worker=lambda p: panel.cancel_requested.wait(WAIT_MS / 1000))
    qtbot.mouseClick(panel.download_button, Qt.MouseButton.LeftButton)

    window.reject()
    qtbot.waitUntil(lambda: not panel.is_busy, timeout=WAIT_MS)
    assert "cancelled" in panel.message.text() and not window.isVisible()
    assert dialog.open_download() is window and panel.download_button.isEnabled()
