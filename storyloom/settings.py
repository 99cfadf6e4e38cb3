"""User settings: model paths, data folder, API server, sampling and image defaults, window geometry.

Stored as TOML in the user config folder (`storyloom.paths.settings_file()`), written atomically. Values are
validated when a `Settings` is made, so a loaded file is either fully valid or reported as damaged
(`SettingsError` names the file and every reason); `load_or_defaults` keeps a backup of a damaged file
and falls back to the defaults.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import sys
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import tomli_w

from engine.atomic import write_text_atomic
from engine.errors import PICKLE_SUFFIXES, StoryloomError
from storyloom import paths

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

log = logging.getLogger(__name__)

TEXT_STEPS: tuple[str, ...] = ("concept", "story", "prompt")
MAX_TOKENS_LIMIT = 32768
# TOML section -> {key in the file: Settings field}; [sampling.<step>] and [image] are nested dataclasses.
TOML_SECTIONS: dict[str, dict[str, str]] = {
    "models": {
        "llm_path": "llm_path",
        "sdxl_path": "sdxl_path",
        "sdxl_vae_path": "sdxl_vae_path",
        "vram_plan_override": "vram_plan_override",
        "use_demo_models": "use_demo_models",
    },
    "storage": {"data_dir": "data_dir"},
    "api": {"enabled": "api_enabled", "host": "api_host", "port": "api_port", "key": "api_key"},
    "window": {"geometry": "window_geometry"},
}


class SettingsError(StoryloomError):
    """The settings file cannot be read or holds invalid values; `problems` lists every reason."""

    def __init__(self, path: Path, problems: list[str], backup_path: Path | None = None) -> None:
        self.path = path
        self.problems = list(problems)
        self.backup_path = backup_path
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"settings file {path} is damaged:\n{lines}")


@dataclass(frozen=True)
class StepSampling:
    """Default sampling for one text step (concept, story or image prompt)."""

    temperature: float
    top_p: float
    max_tokens: int

    def __post_init__(self) -> None:
        _check_number("temperature", self.temperature, 0.0, 2.0)
        _check_number("top_p", self.top_p, 0.0, 1.0, low_open=True)
        _check_int("max_tokens", self.max_tokens, 1, MAX_TOKENS_LIMIT)

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _default_sampling() -> dict[str, StepSampling]:
    return {
        "concept": StepSampling(temperature=0.7, top_p=0.9, max_tokens=320),
        "story": StepSampling(temperature=0.8, top_p=0.95, max_tokens=900),
        "prompt": StepSampling(temperature=0.6, top_p=0.9, max_tokens=120),
    }


@dataclass(frozen=True)
class ImageDefaults:
    """Default SDXL render settings; the renderer checks the scheduler name against the ones it knows."""

    width: int = 1024
    height: int = 1024
    steps: int = 30
    guidance: float = 5.0
    scheduler: str = "euler"

    def __post_init__(self) -> None:
        for name in ("width", "height"):
            value = getattr(self, name)
            _check_int(name, value, 64, 4096)
            if value % 8:
                raise ValueError(f"{name}: must be a multiple of 8, got {value}")
        _check_int("steps", self.steps, 1, 200)
        _check_number("guidance", self.guidance, 0.0, 30.0)
        if not isinstance(self.scheduler, str) or not self.scheduler.strip():
            raise ValueError(f"scheduler: must be a scheduler name, got {self.scheduler!r}")


@dataclass
class Settings:
    """Everything the user can set. `None` paths mean "not set"."""

    llm_path: Path | None = None
    sdxl_path: Path | None = None
    sdxl_vae_path: Path | None = None
    data_dir: Path = field(default_factory=paths.data_dir)
    vram_plan_override: str | None = None
    use_demo_models: bool = False
    api_enabled: bool = False
    api_host: str = "127.0.0.1"
    api_port: int = 8765
    api_key: str | None = None
    sampling: dict[str, StepSampling] = field(default_factory=_default_sampling)
    image: ImageDefaults = field(default_factory=ImageDefaults)
    window_geometry: str | None = None  # the GUI's saved geometry (base64), opaque here

    def __post_init__(self) -> None:
        for name in ("llm_path", "sdxl_path", "sdxl_vae_path"):
            value = getattr(self, name)
            if value is not None:
                setattr(self, name, _as_path(name, value))
        self.data_dir = _as_path("data_dir", self.data_dir)
        for name in ("vram_plan_override", "api_key", "window_geometry"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, str):
                raise ValueError(f"{name}: must be text, got {value!r}")
        if self.vram_plan_override is not None and not self.vram_plan_override.strip():
            raise ValueError("vram_plan_override: must be a plan name or absent (automatic)")
        for name in ("use_demo_models", "api_enabled"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name}: must be true or false, got {getattr(self, name)!r}")
        if not isinstance(self.api_host, str) or not self.api_host.strip():
            raise ValueError(f"api_host: must be a host name or address, got {self.api_host!r}")
        _check_int("api_port", self.api_port, 1, 65535)
        unknown = sorted(set(self.sampling) - set(TEXT_STEPS))
        if unknown:
            raise ValueError(f"sampling: unknown step(s) {', '.join(unknown)}; use {', '.join(TEXT_STEPS)}")
        self.sampling = {**_default_sampling(), **self.sampling}
        if not all(isinstance(s, StepSampling) for s in self.sampling.values()):
            raise ValueError("sampling: each step must be a StepSampling")
        if not isinstance(self.image, ImageDefaults):
            raise ValueError("image: must be ImageDefaults")

    # --- state ------------------------------------------------------------------------------------------
    @property
    def is_configured(self) -> bool:
        """True when real models are set (an LLM folder and an SDXL checkpoint)."""
        return self.llm_path is not None and self.sdxl_path is not None

    def validate_model_paths(self) -> list[str]:
        """Readable problems with the model paths; empty when they look usable or demo models are on."""
        if self.use_demo_models:
            return []
        problems = []
        if self.llm_path is None:
            problems.append("LLM: no model folder is set (choose a Llama-3 folder, or use the demo models)")
        else:
            problems += _llm_folder_problems(self.llm_path)
        if self.sdxl_path is None:
            problems.append("SDXL: no checkpoint is set (choose a folder or a .safetensors file)")
        else:
            problems += _sdxl_problems(self.sdxl_path)
        if self.sdxl_vae_path is not None:
            problems += _vae_problems(self.sdxl_vae_path)
        return problems

    # --- TOML -------------------------------------------------------------------------------------------
    def to_toml_dict(self) -> dict[str, Any]:
        """The TOML document: absent values and the default data folder are left out."""
        doc: dict[str, Any] = {}
        for section, keys in TOML_SECTIONS.items():
            table = {}
            for key, name in keys.items():
                value = getattr(self, name)
                if value is None or (name == "data_dir" and value == paths.data_dir()):
                    continue
                table[key] = str(value) if isinstance(value, Path) else value
            if table:
                doc[section] = table
        doc["sampling"] = {step: s.as_dict() for step, s in self.sampling.items()}
        doc["image"] = dataclasses.asdict(self.image)
        return doc

    @classmethod
    def from_toml_dict(cls, doc: dict[str, Any]) -> Settings:
        """Build settings from a parsed TOML document; raises ValueError listing every bad value.

        Unknown sections and keys are ignored with a warning (a newer version may have written them).
        """
        problems: list[str] = []
        kwargs: dict[str, Any] = {}
        for section in sorted(set(doc) - set(TOML_SECTIONS) - {"sampling", "image"}):
            log.warning("settings: ignoring unknown section [%s]", section)
        for section, keys in TOML_SECTIONS.items():
            table = _table(doc, section, problems)
            for key in sorted(set(table) - set(keys)):
                log.warning("settings: ignoring unknown key %s.%s", section, key)
            for key, name in keys.items():
                # Each value is checked on its own, so that every bad one is reported.
                if key in table and _build(f"{section}.{key}", name, cls, {name: table[key]}, problems):
                    kwargs[name] = table[key]

        defaults = _default_sampling()
        sampling: dict[str, StepSampling] = {}
        for step, values in _table(doc, "sampling", problems).items():
            if step not in TEXT_STEPS:
                log.warning("settings: ignoring unknown step [sampling.%s]", step)
                continue
            values = _table({step: values}, step, problems, where=f"sampling.{step}")
            merged = {**defaults[step].as_dict(), **values}
            built = _build(f"sampling.{step}", None, StepSampling, merged, problems)
            if built is not None:
                sampling[step] = built
        image_fields = {f.name for f in dataclasses.fields(ImageDefaults)}
        image_table = _table(doc, "image", problems)
        for key in sorted(set(image_table) - image_fields):
            log.warning("settings: ignoring unknown key image.%s", key)
        image_values = {k: v for k, v in image_table.items() if k in image_fields}
        image = _build("image", None, ImageDefaults, image_values, problems)
        if problems:
            raise ValueError("\n".join(problems))
        return cls(**kwargs, sampling=sampling, image=image)

    @classmethod
    def load(cls, path: Path | None = None) -> Settings:
        """Read the settings file; defaults when it does not exist. Raises SettingsError when damaged."""
        path = path or paths.settings_file()
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            log.info("no settings file at %s; using defaults", path)
            return cls()
        except (OSError, UnicodeDecodeError) as exc:
            raise SettingsError(path, [f"cannot be read: {exc}"]) from exc
        try:
            doc = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise SettingsError(path, [f"not valid TOML: {exc}"]) from exc
        try:
            return cls.from_toml_dict(doc)
        except ValueError as exc:
            raise SettingsError(path, str(exc).splitlines()) from exc

    @classmethod
    def load_or_defaults(cls, path: Path | None = None) -> tuple[Settings, SettingsError | None]:
        """Like `load`, but a damaged file is copied aside (`settings.toml.damaged-<time>`) and the defaults
        are returned together with the error (its `backup_path` names the copy) for the app to show."""
        path = path or paths.settings_file()
        try:
            return cls.load(path), None
        except SettingsError as exc:
            stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
            backup = path.with_name(f"{path.name}.damaged-{stamp}")
            try:
                shutil.copy2(path, backup)
            except OSError as copy_error:
                log.error("could not back up damaged settings %s: %s", path, copy_error)
                backup = None
            log.warning("%s; using defaults (backup: %s)", exc, backup)
            return cls(), SettingsError(exc.path, exc.problems, backup)

    def save(self, path: Path | None = None) -> Path:
        """Write the settings atomically; returns the file written."""
        path = path or paths.settings_file()
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(path, tomli_w.dumps(self.to_toml_dict()))
        log.debug("settings saved to %s", path)
        return path


# --- validation helpers -----------------------------------------------------------------------------------
def _check_int(name: str, value: Any, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValueError(f"{name}: must be an integer in {low}..{high}, got {value!r}")


def _check_number(name: str, value: Any, low: float, high: float, *, low_open: bool = False) -> None:
    ok = not isinstance(value, bool) and isinstance(value, (int, float))
    ok = ok and (low < value if low_open else low <= value) and value <= high
    if not ok:
        bracket = "(" if low_open else "["
        raise ValueError(f"{name}: must be a number in {bracket}{low}, {high}], got {value!r}")


def _as_path(name: str, value: Any) -> Path:
    if isinstance(value, Path):
        return value.expanduser()
    if isinstance(value, str) and value.strip():
        return Path(value.strip()).expanduser()
    raise ValueError(f"{name}: must be a path, got {value!r}")


def _build(where: str, field_name: str | None, kind: type, values: dict[str, Any], problems: list[str]) -> Any:
    """`kind(**values)`, or None with the reason added to `problems` as "where: reason"."""
    try:
        return kind(**values)
    except (TypeError, ValueError) as exc:
        reason = str(exc)
        if field_name is not None:
            reason = reason.removeprefix(f"{field_name}: ")
        problems.append(f"{where}: {reason}")
        return None


def _table(doc: dict[str, Any], key: str, problems: list[str], where: str | None = None) -> dict[str, Any]:
    value = doc.get(key, {})
    if isinstance(value, dict):
        return value
    problems.append(f"[{where or key}]: must be a table, got {value!r}")
    return {}


# --- model path checks ------------------------------------------------------------------------------------
def _pickle_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.suffix.lower() in PICKLE_SUFFIXES)


def _llm_folder_problems(path: Path) -> list[str]:
    where = f"LLM folder {path}"
    if not path.exists():
        return [f"{where}: does not exist"]
    if not path.is_dir():
        return [f"{where}: is not a folder (choose the folder holding config.json and *.safetensors)"]
    problems = []
    config_file = path / "config.json"
    if not config_file.is_file():
        problems.append(f"{where}: config.json is missing (not a Hugging Face model folder)")
    else:
        try:
            config = json.loads(config_file.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            problems.append(f"{where}: config.json cannot be read: {exc}")
        else:
            if not isinstance(config, dict) or config.get("model_type") != "llama":
                kind = config.get("model_type") if isinstance(config, dict) else None
                problems.append(f"{where}: not a Llama model (model_type is {kind!r}, expected 'llama')")
    if not any(path.glob("*.safetensors")):
        pickles = _pickle_files(path)
        if pickles:
            problems.append(f"{where}: only pickle weights ({', '.join(pickles)}); Storyloom loads .safetensors only")
        else:
            problems.append(f"{where}: no .safetensors weights found")
    if not (path / "tokenizer.json").is_file():
        problems.append(f"{where}: tokenizer.json is missing")
    return problems


def _sdxl_problems(path: Path) -> list[str]:
    where = f"SDXL checkpoint {path}"
    if not path.exists():
        return [f"{where}: does not exist"]
    if path.is_file():
        if path.suffix.lower() in PICKLE_SUFFIXES:
            return [f"{where}: pickle format ({path.suffix}) is refused; use a .safetensors checkpoint"]
        if path.suffix.lower() != ".safetensors":
            return [f"{where}: not a .safetensors file"]
        return []
    if not (path / "model_index.json").is_file():
        return [f"{where}: a folder without model_index.json (not a diffusers SDXL folder)"]
    unet = path / "unet"
    if unet.is_dir() and not any(unet.glob("*.safetensors")) and _pickle_files(unet):
        return [f"{where}: the UNet has only pickle weights; Storyloom loads .safetensors only"]
    return []


def _vae_problems(path: Path) -> list[str]:
    where = f"SDXL VAE {path}"
    if not path.exists():
        return [f"{where}: does not exist"]
    if path.is_file():
        if path.suffix.lower() != ".safetensors":
            return [f"{where}: not a .safetensors file (pickle formats are refused)"]
        return []
    if not (path / "config.json").is_file() or not any(path.glob("*.safetensors")):
        return [f"{where}: a VAE folder needs config.json and .safetensors weights"]
    return []
