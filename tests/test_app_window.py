"""The desktop app end to end on the demo models: the real Studio, engine and renderer, offscreen.

The demo models are built once per session; every test gets its own data folder (linking to them), Studio,
window and library, and closes them.
"""

from __future__ import annotations

import dataclasses
import socket
import time
from pathlib import Path

import httpx
import pytest
from PIL import Image
from PySide6.QtCore import Qt, QTimer

from app.views.main_window import MainWindow
from storyloom.demo import ensure_demo_models
from storyloom.settings import Settings, StepSampling
from storyloom.studio import StoryDraft, Studio

LOAD_TIMEOUT_MS = 600_000
RUN_TIMEOUT_MS = 600_000
SHORT = {
    "concept": StepSampling(temperature=0.8, top_p=1.0, max_tokens=24),
    "story": StepSampling(temperature=0.8, top_p=1.0, max_tokens=32),
    "prompt": StepSampling(temperature=0.8, top_p=1.0, max_tokens=16),
}
LONG = {step: StepSampling(temperature=0.8, top_p=1.0, max_tokens=400) for step in SHORT}


@pytest.fixture(scope="session")
def demo_models(tmp_path_factory) -> Path:
    """The demo models' folder, built once for every test here."""
    return ensure_demo_models(tmp_path_factory.mktemp("demo-data")).root


@pytest.fixture
def open_window(qtbot, demo_models, tmp_path):
    """`open_window(sampling=...)` -> a shown MainWindow whose models are loaded; closed after the test."""
    windows: list[MainWindow] = []

    def make(sampling=SHORT, **settings_changes) -> MainWindow:
        data_dir = tmp_path / f"data-{len(windows)}"
        data_dir.mkdir()
        (data_dir / demo_models.name).symlink_to(demo_models, target_is_directory=True)
        settings = Settings(use_demo_models=True, data_dir=data_dir, sampling=dict(sampling), **settings_changes)
        studio = Studio(settings)
        window = MainWindow(studio, settings)
        qtbot.addWidget(window)
        windows.append(window)
        window.show()
        with qtbot.waitSignal(window.client.ready, timeout=LOAD_TIMEOUT_MS):
            window.start()
        # the list refreshed after loading shows the demo adapters loaded
        qtbot.waitUntil(lambda: any(r.installed for r in window.adapters.model.rows()), timeout=LOAD_TIMEOUT_MS)
        return window

    yield make
    for window in windows:
        window.close()


def _generate(qtbot, window: MainWindow, idea: str = "a lighthouse keeper who befriends a storm") -> None:
    workspace = window.workspace
    workspace.idea_edit.setPlainText(idea)
    assert workspace.generate_button.isEnabled()
    qtbot.mouseClick(workspace.generate_button, Qt.MouseButton.LeftButton)
    assert workspace.is_busy


def _wait_idle(qtbot, window: MainWindow) -> None:
    qtbot.waitUntil(lambda: not window.workspace.is_busy, timeout=RUN_TIMEOUT_MS)


def test_generate_end_to_end_while_the_window_stays_responsive(qtbot, open_window, tmp_path):
    window = open_window()
    workspace = window.workspace
    assert window.library.model.rowCount() == 0
    gaps: list[float] = []  # event-loop latency: the GUI thread never runs model work
    last = [time.perf_counter()]

    def tick() -> None:
        now = time.perf_counter()
        gaps.append(now - last[0])
        last[0] = now

    timer = QTimer(interval=20)
    timer.timeout.connect(tick)
    timer.start()
    _generate(qtbot, window)
    _wait_idle(qtbot, window)
    timer.stop()
    assert workspace.message.objectName() != "inlineError" or not workspace.message.isVisible(), (
        workspace.message.text()
    )
    assert workspace.concept_pane.text().strip()
    assert workspace.story_pane.text().strip()
    assert workspace.prompt_pane.text().strip()
    assert workspace.concept_pane.source_text() == "base model"
    assert workspace.story_pane.source_text() == "story-writer"  # the demo models install both adapters
    assert workspace.prompt_pane.source_text() == "sdxl-prompter"
    image = workspace.image_panel.final_image()
    assert image is not None and not image.isNull()
    assert workspace.draft is not None and workspace.draft.story_id
    qtbot.waitUntil(lambda: window.library.model.rowCount() == 1, timeout=10_000)
    assert window.library.model.story_at(0).id == workspace.draft.story_id
    assert workspace.new_story_button.isEnabled() and workspace.new_image_button.isEnabled()
    workspace.image_panel.save_to(tmp_path / "saved.png")  # Save as keeps the generation parameters
    with Image.open(tmp_path / "saved.png") as saved:
        assert saved.text and str(workspace.draft.seed) in "".join(saved.text.values())
    assert len(gaps) > 10
    assert max(gaps) < 0.5, f"the event loop stalled for {max(gaps):.3f} s"


def test_stop_mid_stream_saves_nothing(qtbot, open_window):
    window = open_window(sampling=LONG)
    workspace = window.workspace
    _generate(qtbot, window)
    qtbot.waitUntil(lambda: bool(workspace.concept_pane.text()), timeout=RUN_TIMEOUT_MS)
    assert workspace.stop_button.isEnabled()
    qtbot.mouseClick(workspace.stop_button, Qt.MouseButton.LeftButton)
    _wait_idle(qtbot, window)
    assert "Stopped" in workspace.message.text()
    assert workspace.image_panel.final_image() is None
    assert window.client.studio.library.list() == []
    assert workspace.generate_button.isEnabled()


def test_close_mid_generation_cancels_and_leaves_library_clean(qtbot, open_window):
    window = open_window(sampling=LONG)
    studio = window.client.studio
    _generate(qtbot, window)
    qtbot.waitUntil(lambda: bool(window.workspace.concept_pane.text()), timeout=RUN_TIMEOUT_MS)
    window.close()
    assert not window.client.is_busy
    root = studio.library.root
    assert [p.name for p in root.iterdir() if p.is_dir()] == []  # no story, no half-written folder
    with pytest.raises(Exception, match=r"closed|not ready|Not ready|load"):
        studio.generate("another idea", studio.default_options(), lambda _e: None)


def test_import_bad_adapter_shows_error_and_changes_nothing(qtbot, open_window, tmp_path):
    window = open_window()
    manager = window.adapters
    studio = window.client.studio
    before = [(r.name, r.state, r.enabled) for r in studio.list_adapters()]
    bad = tmp_path / "bad-adapter"
    bad.mkdir()
    (bad / "adapter_config.json").write_text('{"peft_type": "LORA", "r": 8, "target_modules": ["q_proj"]}')
    (bad / "adapter_model.bin").write_bytes(b"not safetensors")
    with pytest.raises(Exception) as expected:  # the error the Studio gives, to compare verbatim
        studio.import_adapter(bad, "bad")
    manager.import_folder(bad, "bad")
    qtbot.waitUntil(lambda: manager.message.objectName() == "inlineError", timeout=60_000)
    assert manager.message.text() == str(expected.value)
    assert [(r.name, r.state, r.enabled) for r in studio.list_adapters()] == before
    qtbot.waitUntil(lambda: manager.import_button.isEnabled(), timeout=10_000)
    assert "bad" not in [r.name for r in manager.model.rows()]


def test_compare_runs_one_batch_side_by_side(qtbot, open_window):
    window = open_window()
    compare = window.compare
    names = [r.name for r in window.adapters.model.rows() if r.installed and r.enabled]
    assert names, "the demo models install the built-in adapters"
    chosen = [None, *names]
    compare.set_checked(chosen)
    assert compare.chosen() == chosen
    compare.prompt_edit.setPlainText("Tell me about the sea.")
    compare.max_tokens.setValue(12)
    with qtbot.waitSignal(compare.finished, timeout=RUN_TIMEOUT_MS) as finished:
        qtbot.mouseClick(compare.run_button, Qt.MouseButton.LeftButton)
    assert finished.args == ["completed"]
    assert [row.adapter for row in compare.rows] == chosen
    assert len(compare.panes) == len(chosen)
    for pane, label, row in zip(compare.panes, compare.speed_labels, compare.rows, strict=True):
        assert pane.source_text() == row.label
        # QPlainTextEdit stores \r, \r\n and \u2028 as \n and no-break spaces as spaces; the words are the same
        assert pane.text().split() == row.text.split()
        assert "tok/s" in label.text()
    engine = window.client.studio.engine  # ONE batch: every row decoded in the same engine steps
    decode_steps = [s for s in engine.stats().recent_steps if s.kind == "decode"]
    assert any(len(set(step.adapters)) == len(chosen) for step in decode_steps)


def test_library_open_export_delete(qtbot, open_window, tmp_path, monkeypatch):
    window = open_window()
    library = window.client.studio.library
    draft = StoryDraft(
        idea="a cat who keeps a lighthouse",
        concept="A cat. A lighthouse. A storm.",
        title="The Lamp Cat",
        story="Every night the cat lit the lamp.",
        image_prompt="cat, lighthouse, storm, oil painting",
        negative_prompt="blurry",
        seed=7,
        image=Image.new("RGB", (64, 64), (200, 120, 40)),
        sources={"concept": "base model", "story": "story-writer", "prompt": "sdxl-prompter"},
    )
    story_id = library.save(draft)
    view = window.library
    view.refresh()
    assert view.model.rowCount() == 1
    qtbot.waitUntil(lambda: view.model.has_thumbnail(story_id), timeout=30_000)
    view.search_edit.setText("no such words")
    qtbot.waitUntil(lambda: view.model.rowCount() == 0, timeout=5_000)
    view.search_edit.setText("lamp")
    qtbot.waitUntil(lambda: view.model.rowCount() == 1, timeout=5_000)
    view.list_view.setCurrentIndex(view.model.index(0))

    qtbot.mouseClick(view.open_button, Qt.MouseButton.LeftButton)
    workspace = window.workspace
    assert window.tabs.currentWidget() is workspace
    assert workspace.read_only and not workspace.generate_button.isEnabled()
    assert "The Lamp Cat" in workspace.story_pane.text()
    assert workspace.story_pane.source_text() == "story-writer"
    assert workspace.image_panel.final_image() is not None
    qtbot.mouseClick(workspace.continue_button, Qt.MouseButton.LeftButton)
    assert not workspace.read_only and workspace.draft.story_id is None
    assert workspace.new_image_button.isEnabled()

    exported = view.export_current("md", tmp_path)
    assert exported is not None and exported.read_text(encoding="utf-8").count("Every night the cat") == 1
    monkeypatch.setattr(view, "_ask_overwrite", lambda exc: False)
    assert view.export_current("md", tmp_path) is None  # exists: refused, not overwritten
    assert "exists" in view.message.text()
    view.delete_current(confirmed=True)
    assert view.model.rowCount() == 0 and library.list() == []


def test_rerun_new_image_rerender_and_new_story(qtbot, open_window):
    window = open_window()
    workspace = window.workspace
    _generate(qtbot, window)
    _wait_idle(qtbot, window)
    first = workspace.draft
    assert first is not None and first.story_id and first.image is not None

    qtbot.mouseClick(workspace.new_image_button, Qt.MouseButton.LeftButton)
    _wait_idle(qtbot, window)
    assert workspace.draft.seed != first.seed
    assert workspace.draft.image_prompt == first.image_prompt and workspace.draft.story == first.story
    assert workspace.image_panel.final_image() is not None

    workspace.prompt_pane.text_edit.setPlainText("red lighthouse, storm clouds, oil painting")
    assert workspace.rerender_button.isEnabled()
    seed = workspace.draft.seed
    qtbot.mouseClick(workspace.rerender_button, Qt.MouseButton.LeftButton)
    _wait_idle(qtbot, window)
    assert workspace.draft.image_prompt == "red lighthouse, storm clouds, oil painting"
    assert workspace.draft.seed == seed
    assert workspace.prompt_pane.source_text() == "edited by you"

    qtbot.mouseClick(workspace.new_story_button, Qt.MouseButton.LeftButton)
    _wait_idle(qtbot, window)
    assert workspace.draft.concept == first.concept
    assert workspace.story_pane.text().strip() and workspace.story_pane.source_text() == "story-writer"
    # every re-run replaced the one library entry
    assert [s.id for s in window.client.studio.library.list()] == [first.story_id]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_local_api_follows_the_settings(qtbot, open_window):
    window = open_window(api_enabled=True, api_port=_free_port())
    studio = window.client.studio
    url = studio.api_url
    assert url is not None and url.startswith("http://127.0.0.1:")
    models = httpx.get(f"{url}/v1/models", timeout=30).json()
    ids = [m["id"] for m in models["data"]]
    assert ids[0] == studio.engine.model_id and "story-writer" in ids and "sdxl-prompter" in ids
    window.poll_status()
    assert f"API {url}" in window.status.state_label.text()
    window.apply_settings(dataclasses.replace(window.settings, api_enabled=False))
    assert studio.api_url is None
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{url}/v1/models", timeout=5)
