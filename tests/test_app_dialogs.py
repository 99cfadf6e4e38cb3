"""First-run and settings dialogs: model paths validated on entry, bad values refused with the reason."""

from __future__ import annotations

import json

import pytest
from PySide6.QtCore import Qt

from app.views.first_run import FirstRunDialog, needs_first_run
from app.views.settings_dialog import SettingsDialog
from storyloom.settings import Settings


@pytest.fixture
def real_models(tmp_path):
    """Folders that pass the path checks (the checks look at files, not at the weights' contents)."""
    llm = tmp_path / "llama"
    llm.mkdir()
    (llm / "config.json").write_text(json.dumps({"model_type": "llama"}))
    (llm / "tokenizer.json").write_text("{}")
    (llm / "model.safetensors").write_bytes(b"")
    sdxl = tmp_path / "sdxl.safetensors"
    sdxl.write_bytes(b"")
    return llm, sdxl


def _dialog(qtbot, dialog):
    qtbot.addWidget(dialog)
    dialog.show()
    return dialog


def test_needs_first_run_only_without_models(real_models):
    llm, sdxl = real_models
    assert needs_first_run(Settings())
    assert not needs_first_run(Settings(use_demo_models=True))
    assert not needs_first_run(Settings(llm_path=llm, sdxl_path=sdxl))


def test_first_run_use_demo_models(qtbot):
    dialog = _dialog(qtbot, FirstRunDialog(Settings()))
    assert not dialog.use_button.isEnabled()
    with qtbot.waitSignal(dialog.accepted, timeout=5000):
        qtbot.mouseClick(dialog.demo_button, Qt.MouseButton.LeftButton)
    result = dialog.result_settings()
    assert result is not None and result.use_demo_models
    assert result.llm_path is None


def test_first_run_rejects_missing_folder_with_the_reason(qtbot, tmp_path):
    dialog = _dialog(qtbot, FirstRunDialog(Settings()))
    missing = tmp_path / "no-such-model"
    dialog.paths.llm_field.edit.setText(str(missing))
    assert not dialog.use_button.isEnabled()
    assert dialog.paths.llm_field.edit.property("invalid") is True
    text = dialog.paths.message.text()
    assert str(missing) in text and "does not exist" in text
    dialog.use_real_models()
    assert dialog.result_settings() is None


def test_first_run_refuses_pickle_checkpoint(qtbot, real_models, tmp_path):
    llm, _ = real_models
    pickle = tmp_path / "sdxl.ckpt"
    pickle.write_bytes(b"")
    dialog = _dialog(qtbot, FirstRunDialog(Settings()))
    dialog.paths.llm_field.edit.setText(str(llm))
    dialog.paths.sdxl_field.edit.setText(str(pickle))
    assert not dialog.use_button.isEnabled()
    assert dialog.paths.sdxl_field.edit.property("invalid") is True
    assert dialog.paths.llm_field.edit.property("invalid") is False
    assert "pickle" in dialog.paths.message.text()


def test_first_run_accepts_valid_real_models(qtbot, real_models):
    llm, sdxl = real_models
    dialog = _dialog(qtbot, FirstRunDialog(Settings()))
    dialog.paths.llm_field.edit.setText(str(llm))
    dialog.paths.sdxl_field.edit.setText(str(sdxl))
    assert dialog.use_button.isEnabled()
    with qtbot.waitSignal(dialog.accepted, timeout=5000):
        qtbot.mouseClick(dialog.use_button, Qt.MouseButton.LeftButton)
    result = dialog.result_settings()
    assert (result.llm_path, result.sdxl_path, result.use_demo_models) == (llm, sdxl, False)


def test_settings_refuses_bad_image_width_and_keeps_dialog_open(qtbot):
    dialog = _dialog(qtbot, SettingsDialog(Settings(use_demo_models=True)))
    dialog.width_spin.setValue(1001)
    dialog.accept()
    assert dialog.result_settings() is None
    assert dialog.isVisible()
    assert "width" in dialog.message.text() and "multiple of 8" in dialog.message.text()


def test_settings_refuses_bad_model_path_unless_demo(qtbot, tmp_path):
    dialog = _dialog(qtbot, SettingsDialog(Settings(use_demo_models=True)))
    dialog.demo_check.setChecked(False)
    dialog.paths.llm_field.edit.setText(str(tmp_path / "nowhere"))
    dialog.accept()
    assert dialog.result_settings() is None
    assert "does not exist" in dialog.message.text()
    dialog.demo_check.setChecked(True)
    dialog.accept()
    assert dialog.result_settings() is not None and dialog.result_settings().use_demo_models


def test_settings_round_trip_of_edited_values(qtbot, tmp_path, real_models):
    llm, sdxl = real_models
    dialog = _dialog(qtbot, SettingsDialog(Settings(llm_path=llm, sdxl_path=sdxl)))
    dialog.sampling_fields["story"][0].setValue(0.55)
    dialog.sampling_fields["concept"][2].setValue(64)
    dialog.steps_spin.setValue(12)
    dialog.api_check.setChecked(True)
    dialog.api_port.setValue(9001)
    dialog.data_dir_field.edit.setText(str(tmp_path / "data"))
    dialog.accept()
    result = dialog.result_settings()
    assert result is not None
    assert result.sampling["story"].temperature == pytest.approx(0.55)
    assert result.sampling["concept"].max_tokens == 64
    assert result.image.steps == 12
    assert (result.api_enabled, result.api_port) == (True, 9001)
    assert result.data_dir == tmp_path / "data"
    saved = result.save(tmp_path / "settings.toml")
    assert Settings.load(saved).sampling["story"].temperature == pytest.approx(0.55)
