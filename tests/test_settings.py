"""Settings: defaults, validation, TOML round trip, damaged files, model path checks, user folders."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from storyloom import paths
from storyloom.settings import ImageDefaults, Settings, SettingsError, StepSampling


def test_user_dirs_follow_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("STORYLOOM_CONFIG_DIR", str(tmp_path / "cfg"))
    monkeypatch.setenv("STORYLOOM_DATA_DIR", str(tmp_path / "data"))
    assert paths.config_dir() == tmp_path / "cfg"
    assert paths.data_dir() == tmp_path / "data"
    assert paths.settings_file() == tmp_path / "cfg" / "settings.toml"
    assert Settings().data_dir == tmp_path / "data"


def test_user_dirs_default_to_the_platform_folders(monkeypatch):
    monkeypatch.delenv("STORYLOOM_CONFIG_DIR")
    monkeypatch.setenv("STORYLOOM_DATA_DIR", "  ")
    assert "storyloom" in str(paths.config_dir()).lower()
    assert "storyloom" in str(paths.data_dir()).lower()
    assert paths.config_dir().is_absolute()


def test_defaults():
    s = Settings()
    assert (s.api_host, s.api_port, s.api_enabled, s.api_key) == ("127.0.0.1", 8765, False, None)
    assert s.llm_path is None and s.sdxl_path is None
    assert not s.is_configured
    assert set(s.sampling) == {"concept", "story", "prompt"}
    assert s.image == ImageDefaults(1024, 1024, 30, 5.0, "euler")


def test_missing_file_gives_defaults_and_creates_nothing():
    assert Settings.load() == Settings()
    assert not paths.settings_file().exists()


def test_round_trip_of_every_field(tmp_path):
    s = Settings(
        llm_path=tmp_path / "llama",
        sdxl_path=str(tmp_path / "sdxl.safetensors"),
        sdxl_vae_path=tmp_path / "vae",
        data_dir=tmp_path / "elsewhere",
        vram_plan_override="sequential",
        use_demo_models=True,
        api_enabled=True,
        api_host="0.0.0.0",
        api_port=9000,
        api_key="sekret-ключ",
        sampling={"story": StepSampling(temperature=1.1, top_p=0.5, max_tokens=2000)},
        image=ImageDefaults(width=832, height=1216, steps=12, guidance=7.5, scheduler="dpmpp_2m"),
        window_geometry="AdnQywADAAAAAA==",
    )
    written = s.save()
    assert written == paths.settings_file()
    loaded = Settings.load()
    assert loaded == s
    assert loaded.sdxl_path == tmp_path / "sdxl.safetensors"
    assert loaded.sampling["concept"] == Settings().sampling["concept"]
    assert loaded.is_configured
    assert not list(written.parent.glob("*.tmp"))


def test_default_data_dir_is_not_pinned_in_the_file(tmp_path, monkeypatch):
    Settings().save()
    assert "data_dir" not in paths.settings_file().read_text()
    monkeypatch.setenv("STORYLOOM_DATA_DIR", str(tmp_path / "moved"))
    assert Settings.load().data_dir == tmp_path / "moved"


def test_save_replaces_the_previous_file():
    Settings(api_port=1234).save()
    Settings(api_port=4321).save()
    assert Settings.load().api_port == 4321


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"api_port": 0}, "api_port"),
        ({"api_port": 70000}, "api_port"),
        ({"api_port": True}, "api_port"),
        ({"api_host": " "}, "api_host"),
        ({"api_enabled": "yes"}, "api_enabled"),
        ({"llm_path": ""}, "llm_path"),
        ({"data_dir": 5}, "data_dir"),
        ({"vram_plan_override": ""}, "vram_plan_override"),
        ({"api_key": 123}, "api_key"),
        ({"sampling": {"epilogue": StepSampling(0.5, 0.5, 5)}}, "epilogue"),
    ],
)
def test_bad_values_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Settings(**kwargs)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"temperature": -0.1}, "temperature"),
        ({"temperature": 2.5}, "temperature"),
        ({"top_p": 0.0}, "top_p"),
        ({"top_p": 1.5}, "top_p"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_tokens": 2.5}, "max_tokens"),
    ],
)
def test_bad_sampling_is_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        StepSampling(**{"temperature": 0.7, "top_p": 0.9, "max_tokens": 100, **kwargs})


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"width": 1001}, "multiple of 8"),
        ({"height": 32}, "height"),
        ({"steps": 0}, "steps"),
        ({"guidance": -1}, "guidance"),
        ({"scheduler": ""}, "scheduler"),
    ],
)
def test_bad_image_defaults_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ImageDefaults(**kwargs)


def test_damaged_toml_is_reported_with_the_file_name():
    file = paths.settings_file()
    file.parent.mkdir(parents=True)
    file.write_text("[api\nport = ")
    with pytest.raises(SettingsError) as info:
        Settings.load()
    assert info.value.path == file
    assert str(file) in str(info.value)
    assert "not valid TOML" in str(info.value)


def test_every_bad_value_in_the_file_is_listed():
    file = paths.settings_file()
    file.parent.mkdir(parents=True)
    file.write_text(
        '[api]\nport = "eighty"\nhost = ""\n[image]\nwidth = 1001\n[sampling.story]\ntop_p = 3.0\n'
        "[models]\nuse_demo_models = 1\n[future]\nx = 1\n[window]\nsize = 3\n"
    )
    with pytest.raises(SettingsError) as info:
        Settings.load()
    problems = "\n".join(info.value.problems)
    assert len(info.value.problems) == 5
    for where in ("api.port", "api.host", "image", "sampling.story", "models.use_demo_models"):
        assert where in problems
    assert "future" not in problems  # unknown sections and keys are ignored (a newer version wrote them)


def test_a_section_that_is_not_a_table_is_reported():
    file = paths.settings_file()
    file.parent.mkdir(parents=True)
    file.write_text('api = "on"\n')
    with pytest.raises(SettingsError, match=r"\[api\]: must be a table"):
        Settings.load()


def test_damaged_file_falls_back_to_defaults_and_keeps_a_backup():
    file = paths.settings_file()
    file.parent.mkdir(parents=True)
    file.write_bytes(b"\xff\xfe not text")
    settings, error = Settings.load_or_defaults()
    assert settings == Settings()
    assert isinstance(error, SettingsError)
    assert error.backup_path is not None and error.backup_path.read_bytes() == b"\xff\xfe not text"
    assert error.backup_path.parent == file.parent
    assert file.read_bytes() == b"\xff\xfe not text"  # untouched until the user saves
    settings.save()
    assert Settings.load() == Settings()


def test_good_file_loads_without_error():
    Settings(api_port=8080).save()
    settings, error = Settings.load_or_defaults()
    assert error is None and settings.api_port == 8080


# --- model path checks ----------------------------------------------------------------------------------
def _llama_folder(folder: Path, *, model_type="llama", weights="model.safetensors", tokenizer=True) -> Path:
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"model_type": model_type}))
    if weights.endswith(".safetensors"):
        save_file({"w": torch.zeros(1)}, str(folder / weights))
    elif weights:
        (folder / weights).write_bytes(b"pickle")
    if tokenizer:
        (folder / "tokenizer.json").write_text("{}")
    return folder


def _sdxl_folder(folder: Path) -> Path:
    (folder / "unet").mkdir(parents=True)
    (folder / "model_index.json").write_text("{}")
    save_file({"w": torch.zeros(1)}, str(folder / "unet" / "diffusion_pytorch_model.safetensors"))
    return folder


def test_good_model_paths_have_no_problems(tmp_path):
    single = tmp_path / "sdxl.safetensors"
    save_file({"w": torch.zeros(1)}, str(single))
    vae = tmp_path / "vae.safetensors"
    save_file({"w": torch.zeros(1)}, str(vae))
    llm = _llama_folder(tmp_path / "llama")
    assert Settings(llm_path=llm, sdxl_path=single, sdxl_vae_path=vae).validate_model_paths() == []
    assert Settings(llm_path=llm, sdxl_path=_sdxl_folder(tmp_path / "sdxl")).validate_model_paths() == []


def test_demo_models_need_no_paths():
    assert Settings(use_demo_models=True).validate_model_paths() == []
    problems = Settings().validate_model_paths()
    assert len(problems) == 2
    assert problems[0].startswith("LLM") and problems[1].startswith("SDXL")


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        (lambda p: p / "missing", "does not exist"),
        (lambda p: _llama_folder(p / "m", model_type="mistral"), "not a Llama model"),
        (lambda p: _llama_folder(p / "m", weights="pytorch_model.bin"), "only pickle weights"),
        (lambda p: _llama_folder(p / "m", weights=""), "no .safetensors"),
        (lambda p: _llama_folder(p / "m", tokenizer=False), "tokenizer.json is missing"),
    ],
)
def test_bad_llm_folders(tmp_path, make, expected):
    problems = Settings(llm_path=make(tmp_path), use_demo_models=False).validate_model_paths()
    assert any(p.startswith("LLM") and expected in p for p in problems), problems


def test_llm_file_instead_of_folder_and_unreadable_config(tmp_path):
    file = tmp_path / "model.safetensors"
    file.write_bytes(b"x")
    assert "is not a folder" in Settings(llm_path=file).validate_model_paths()[0]
    folder = _llama_folder(tmp_path / "m")
    (folder / "config.json").write_text("{broken")
    assert "config.json cannot be read" in Settings(llm_path=folder).validate_model_paths()[0]
    os.remove(folder / "config.json")
    assert "config.json is missing" in Settings(llm_path=folder).validate_model_paths()[0]


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("sd_xl_base.ckpt", "pickle format (.ckpt) is refused"),
        ("model.bin", "pickle format"),
        ("model.gguf", "not a .safetensors file"),
        ("missing.safetensors", "does not exist"),
    ],
)
def test_bad_sdxl_files(tmp_path, name, expected):
    path = tmp_path / name
    if name != "missing.safetensors":
        path.write_bytes(b"x")
    problems = Settings(sdxl_path=path).validate_model_paths()
    assert any(p.startswith("SDXL") and expected in p for p in problems), problems


def test_bad_sdxl_folders_and_vae(tmp_path):
    plain = tmp_path / "plain"
    plain.mkdir()
    assert any("model_index.json" in p for p in Settings(sdxl_path=plain).validate_model_paths())
    pickled = tmp_path / "pickled"
    (pickled / "unet").mkdir(parents=True)
    (pickled / "model_index.json").write_text("{}")
    (pickled / "unet" / "diffusion_pytorch_model.bin").write_bytes(b"x")
    assert any("only pickle weights" in p for p in Settings(sdxl_path=pickled).validate_model_paths())
    vae = tmp_path / "vae.pt"
    vae.write_bytes(b"x")
    assert any(p.startswith("SDXL VAE") for p in Settings(sdxl_vae_path=vae).validate_model_paths())
    assert any("VAE folder needs" in p for p in Settings(sdxl_vae_path=plain).validate_model_paths())
