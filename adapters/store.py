"""The adapter store: built-in adapters (manifest + installed weights) and user-imported PEFT LoRA folders.

Layout under `<data dir>/adapters/`: one folder per adapter holding the PEFT files (`adapter_config.json`,
`adapter_model.safetensors`) and a small `storyloom.toml` sidecar (role, enabled flag, description). A
built-in adapter whose weights are absent is listed with `installed=False`.

Folders are written in a hidden staging folder and renamed into place, so a crash never leaves half an
adapter; leftovers are cleaned (or a replaced folder restored) when the store opens. The store checks files
only; the engine checks the tensors against the loaded base model.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import sys
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from adapters.manifest import AdapterManifest, builtin_manifests, is_valid_name, is_valid_role
from engine.atomic import fsync_dir, write_text_atomic
from engine.errors import PICKLE_SUFFIXES, AdapterError, AdapterNotFoundError

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

log = logging.getLogger(__name__)

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
SIDECAR_FILE = "storyloom.toml"
STAGING_PREFIX = ".staging-"
TRASH_PREFIX = ".trash-"  # a folder being replaced: put back when the replacement did not land
REMOVING_PREFIX = ".removing-"  # a folder being deleted: always finished off
MAX_SAFETENSORS_HEADER = 100 * 1024 * 1024
WINDOWS_RESERVED = frozenset(
    {"con", "prn", "aux", "nul", *(f"com{i}" for i in range(1, 10)), *(f"lpt{i}" for i in range(1, 10))}
)


@dataclass(frozen=True)
class StoredAdapter:
    """One adapter as the store knows it; `path` is its PEFT folder (it may not exist when not installed)."""

    name: str
    role: str
    description: str
    enabled: bool
    builtin: bool
    installed: bool
    path: Path
    manifest: AdapterManifest | None = None  # built-in adapters only
    ranks: tuple[int, ...] = ()  # r and every rank_pattern value from adapter_config.json
    target_modules: tuple[str, ...] = ()
    size_bytes: int = 0  # of the weights file
    alpha: float | None = None

    @property
    def weights_file(self) -> Path:
        return self.path / WEIGHTS_FILE


# --- file-level checks ------------------------------------------------------------------------------------
def name_problems(name: object) -> list[str]:
    """Why `name` cannot name an adapter folder (empty when it can)."""
    if not is_valid_name(name):
        return [
            f"name {name!r}: use 1-64 characters from a-z, 0-9, '.', '_', '-', "
            "starting with a letter or digit and without '..'"
        ]
    if str(name).split(".")[0] in WINDOWS_RESERVED:
        return [f"name {name!r}: reserved by Windows, choose another"]
    return []


def _safetensors_problems(file: Path) -> list[str]:
    """Check the safetensors header (JSON after a little-endian u64 length) and that LoRA tensors exist."""
    size = file.stat().st_size
    with file.open("rb") as f:
        head = f.read(8)
        if len(head) < 8:
            return [f"{file.name}: too short to be a safetensors file"]
        length = int.from_bytes(head, "little")
        if length > min(size - 8, MAX_SAFETENSORS_HEADER):
            return [f"{file.name}: not a safetensors file (bad header length)"]
        try:
            header = json.loads(f.read(length))
        except (UnicodeDecodeError, ValueError):
            return [f"{file.name}: not a safetensors file (header is not JSON)"]
    if not isinstance(header, dict):
        return [f"{file.name}: not a safetensors file (header is not a table)"]
    tensors = {k: v for k, v in header.items() if k != "__metadata__"}
    try:
        end = max((int(v["data_offsets"][1]) for v in tensors.values()), default=0)
    except (TypeError, KeyError, IndexError, ValueError):
        return [f"{file.name}: not a safetensors file (malformed tensor entries)"]
    problems = []
    if 8 + length + end != size:
        problems.append(f"{file.name}: truncated or damaged ({size} bytes, header expects {8 + length + end})")
    if not any(".lora_A." in k for k in tensors) or not any(".lora_B." in k for k in tensors):
        problems.append(f"{file.name}: holds no LoRA tensors (no '.lora_A.' / '.lora_B.' names)")
    return problems


def _config_problems(file: Path) -> list[str]:
    try:
        config = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        return [f"{CONFIG_FILE}: cannot be read as JSON: {exc}"]
    if not isinstance(config, dict):
        return [f"{CONFIG_FILE}: must hold a JSON object"]
    problems = []
    if config.get("peft_type") != "LORA":
        problems.append(f"{CONFIG_FILE}: peft_type is {config.get('peft_type')!r}; only LoRA ('LORA') is supported")
    rank = config.get("r")
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        problems.append(f"{CONFIG_FILE}: r must be a positive integer, got {rank!r}")
    alpha = config.get("lora_alpha")
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or alpha <= 0:
        problems.append(f"{CONFIG_FILE}: lora_alpha must be a positive number, got {alpha!r}")
    targets = config.get("target_modules")
    if not (isinstance(targets, str) and targets) and not (
        isinstance(targets, list) and targets and all(isinstance(t, str) for t in targets)
    ):
        problems.append(f"{CONFIG_FILE}: target_modules must name the adapted modules, got {targets!r}")
    if config.get("use_dora"):
        problems.append(f"{CONFIG_FILE}: DoRA adapters (use_dora) are not supported")
    return problems


def peft_folder_problems(folder: Path) -> list[str]:
    """Every file-level reason why `folder` is not a usable PEFT LoRA folder with safetensors weights."""
    if not folder.exists():
        return [f"folder {folder} does not exist"]
    if not folder.is_dir():
        return [f"{folder} is not a folder (choose the folder holding {CONFIG_FILE} and {WEIGHTS_FILE})"]
    problems = []
    if (folder / CONFIG_FILE).is_file():
        problems += _config_problems(folder / CONFIG_FILE)
    else:
        problems.append(f"{CONFIG_FILE} is missing (not a PEFT adapter folder)")
    if (folder / WEIGHTS_FILE).is_file():
        problems += _safetensors_problems(folder / WEIGHTS_FILE)
    else:
        pickles = sorted(p.name for p in folder.iterdir() if p.suffix.lower() in PICKLE_SUFFIXES)
        if pickles:
            problems.append(
                f"{', '.join(pickles)}: pickle weights are refused (they can run code); "
                f"convert the adapter to {WEIGHTS_FILE}"
            )
        else:
            problems.append(f"{WEIGHTS_FILE} is missing")
    return problems


# --- small file helpers -----------------------------------------------------------------------------------
def _copy_durably(src: Path, dst: Path) -> None:
    shutil.copyfile(src, dst)
    with dst.open("rb+") as f:
        os.fsync(f.fileno())


def _toml_value(value: str | bool) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    # A JSON string is a TOML basic string, except that TOML also forbids a raw DEL.
    return json.dumps(value, ensure_ascii=False).replace("\x7f", "\\u007f")


def _sidecar_text(values: dict[str, str | bool]) -> str:
    lines = ["# Storyloom's notes on this adapter; the PEFT files beside it are the adapter itself."]
    lines += [f"{key} = {_toml_value(value)}" for key, value in values.items()]
    return "\n".join(lines) + "\n"


def _read_sidecar(folder: Path) -> dict[str, Any]:
    file = folder / SIDECAR_FILE
    if not file.is_file():
        return {}
    try:
        values = tomllib.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        log.warning("ignoring damaged %s: %s", file, exc)
        return {}
    return values


def _config_summary(folder: Path) -> dict[str, Any]:
    """ranks, target modules, alpha and weights size from a PEFT folder (empty when not installed)."""
    try:
        config = json.loads((folder / CONFIG_FILE).read_text(encoding="utf-8"))
        size = (folder / WEIGHTS_FILE).stat().st_size
    except (OSError, ValueError):
        return {}
    ranks = {config.get("r"), *(config.get("rank_pattern") or {}).values()}
    targets = config.get("target_modules") or ()
    return {
        "ranks": tuple(sorted(r for r in ranks if isinstance(r, int))),
        "target_modules": (targets,) if isinstance(targets, str) else tuple(sorted(targets)),
        "alpha": config.get("lora_alpha"),
        "size_bytes": size,
    }


class AdapterStore:
    """Built-in and user adapters under `<data_dir>/adapters/`."""

    def __init__(self, data_dir: Path) -> None:
        self.root = Path(data_dir) / "adapters"
        self.manifests = builtin_manifests()
        self._hashes: dict[tuple[Path, int, int], str] = {}
        if self.root.is_dir():
            self._recover()

    # --- queries ----------------------------------------------------------------------------------------
    def list(self) -> list[StoredAdapter]:
        """Built-in adapters first, then user adapters, each group by name."""
        user = []
        if self.root.is_dir():
            for folder in sorted(self.root.iterdir()):
                if folder.name.startswith(".") or folder.name in self.manifests:
                    continue  # hidden: staging folders of changes under way
                if not is_valid_name(folder.name):
                    log.warning("ignoring adapter folder with an invalid name: %s", folder)
                elif self._is_user_adapter(folder.name):
                    user.append(self._stored(folder.name))
        return [self._stored(name) for name in sorted(self.manifests)] + user

    def get(self, name: str) -> StoredAdapter:
        if not self._exists(name):
            raise AdapterNotFoundError(name, [a.name for a in self.list()])
        return self._stored(name)

    def weights_path(self, name: str) -> Path:
        """The PEFT folder to load; raises AdapterError when a built-in adapter's weights are not installed."""
        adapter = self.get(name)
        if not adapter.installed:
            raise AdapterError(name, [f"its weights are not installed (expected a PEFT folder at {adapter.path})"])
        return adapter.path

    def sha256(self, name: str) -> str:
        """Hex sha256 of the weights file (cached while the file is unchanged); "" when not installed."""
        adapter = self.get(name)
        if not adapter.installed:
            return ""
        stat = adapter.weights_file.stat()
        key = (adapter.weights_file, stat.st_size, stat.st_mtime_ns)
        if key not in self._hashes:
            digest = hashlib.sha256()
            with adapter.weights_file.open("rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    digest.update(chunk)
            self._hashes[key] = digest.hexdigest()
        return self._hashes[key]

    # --- changes ----------------------------------------------------------------------------------------
    def import_adapter(self, src: Path, name: str, role: str = "custom", description: str = "") -> StoredAdapter:
        """Copy a PEFT LoRA folder in as a user adapter; raises AdapterError listing every problem and
        leaves nothing behind when it fails."""
        src = Path(src)
        problems = name_problems(name)
        if not problems and name in self.manifests:
            problems.append(f"name {name!r} belongs to a built-in adapter; choose another name")
        elif not problems and self._exists(name):
            problems.append(f"name {name!r} is taken by an adapter already imported")
        if not is_valid_role(role):
            problems.append(f"role {role!r}: use a-z, 0-9 and '_', starting with a letter")
        if not isinstance(description, str):
            problems.append("description must be text")
        problems += peft_folder_problems(src)
        if problems:
            raise AdapterError(name, problems)
        sidecar = {"role": role, "enabled": True, "description": description}
        self._put(name, src, sidecar, replace=False)
        log.info("imported adapter %s from %s", name, src)
        return self._stored(name)

    def install_builtin_weights(self, name: str, src: Path) -> StoredAdapter:
        """Install (or replace) the PEFT weights of a built-in adapter from folder `src`."""
        if name not in self.manifests:
            raise AdapterError(name, [f"not a built-in adapter; built-in: {', '.join(sorted(self.manifests))}"])
        src = Path(src)
        problems = peft_folder_problems(src)
        if problems:
            raise AdapterError(name, problems)
        self._put(name, src, _read_sidecar(self.root / name), replace=True)
        log.info("installed weights of built-in adapter %s from %s", name, src)
        return self._stored(name)

    def remove(self, name: str) -> None:
        """Delete a user adapter; for a built-in adapter only its weights are deleted (the manifest stays)."""
        adapter = self.get(name)
        if adapter.builtin:
            for file in (WEIGHTS_FILE, CONFIG_FILE):
                (adapter.path / file).unlink(missing_ok=True)
            log.info("removed the weights of built-in adapter %s", name)
            return
        doomed = self.root / f"{REMOVING_PREFIX}{name}-{uuid.uuid4().hex[:8]}"
        os.rename(adapter.path, doomed)
        fsync_dir(self.root)
        shutil.rmtree(doomed, ignore_errors=True)
        log.info("removed adapter %s", name)

    def set_enabled(self, name: str, enabled: bool) -> StoredAdapter:
        adapter = self.get(name)
        values = _read_sidecar(adapter.path)
        values["enabled"] = bool(enabled)
        if not adapter.builtin:
            values.setdefault("role", adapter.role)
            values.setdefault("description", adapter.description)
        adapter.path.mkdir(parents=True, exist_ok=True)
        write_text_atomic(adapter.path / SIDECAR_FILE, _sidecar_text(values))
        return self._stored(name)

    # --- internals --------------------------------------------------------------------------------------
    def _exists(self, name: str) -> bool:
        return name in self.manifests or (not name_problems(name) and self._is_user_adapter(name))

    def _is_user_adapter(self, name: str) -> bool:
        folder = self.root / name
        return (folder / SIDECAR_FILE).is_file() or (folder / CONFIG_FILE).is_file()

    def _stored(self, name: str) -> StoredAdapter:
        folder = self.root / name
        sidecar = _read_sidecar(folder)
        manifest = self.manifests.get(name)
        installed = (folder / CONFIG_FILE).is_file() and (folder / WEIGHTS_FILE).is_file()
        role = manifest.role if manifest else sidecar.get("role", "custom")
        description = manifest.description if manifest else sidecar.get("description", "")
        enabled = sidecar.get("enabled", True)
        return StoredAdapter(
            name=name,
            role=role if is_valid_role(role) else "custom",
            description=description if isinstance(description, str) else "",
            enabled=enabled if isinstance(enabled, bool) else True,
            builtin=manifest is not None,
            installed=installed,
            path=folder,
            manifest=manifest,
            **(_config_summary(folder) if installed else {}),
        )

    def _put(self, name: str, src: Path, sidecar: dict[str, Any], *, replace: bool) -> None:
        """Stage the PEFT files and the sidecar, then rename the staged folder to `<root>/<name>`."""
        self.root.mkdir(parents=True, exist_ok=True)
        stage = Path(tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}{name}-", dir=self.root))
        final = self.root / name
        trash = self.root / f"{TRASH_PREFIX}{name}-{uuid.uuid4().hex[:8]}"
        try:
            for file in (CONFIG_FILE, WEIGHTS_FILE):
                _copy_durably(src / file, stage / file)
            if sidecar:
                write_text_atomic(stage / SIDECAR_FILE, _sidecar_text(sidecar))
            fsync_dir(stage)
            if replace and final.exists():
                os.rename(final, trash)
            elif final.exists():
                raise AdapterError(name, [f"name {name!r} is taken by an adapter already imported"])
            os.rename(stage, final)
            fsync_dir(self.root)
        except BaseException:
            if trash.exists() and not final.exists():
                os.rename(trash, final)
            shutil.rmtree(stage, ignore_errors=True)
            raise
        shutil.rmtree(trash, ignore_errors=True)

    def _recover(self) -> None:
        """Finish what a crash interrupted: restore a replaced folder that was not put back, drop leftovers."""
        for folder in sorted(self.root.iterdir()):
            if folder.name.startswith(TRASH_PREFIX):
                name = folder.name.removeprefix(TRASH_PREFIX).rsplit("-", 1)[0]
                if is_valid_name(name) and not (self.root / name).exists():
                    log.warning("restoring adapter %s after an interrupted change", name)
                    os.rename(folder, self.root / name)
                    continue
            if folder.name.startswith((TRASH_PREFIX, STAGING_PREFIX, REMOVING_PREFIX)):
                log.info("removing leftover %s", folder)
                shutil.rmtree(folder, ignore_errors=True)
