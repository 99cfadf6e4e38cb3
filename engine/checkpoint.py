"""Reads a Hugging Face checkpoint folder: config, safetensors shards (never pickle)."""

from __future__ import annotations

import json
import logging
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open

from engine.errors import PICKLE_SUFFIXES, CheckpointError, UnsafeCheckpointError

log = logging.getLogger(__name__)

INDEX_FILE = "model.safetensors.index.json"


def refuse_pickle(path: Path, found: list[Path]) -> UnsafeCheckpointError:
    names = ", ".join(p.name for p in found[:5])
    return UnsafeCheckpointError(
        f"{path}: only pickle weights were found ({names}). Storyloom loads safetensors only, because pickle "
        "files can run arbitrary code when loaded. Convert the checkpoint to .safetensors first."
    )


class Checkpoint:
    """Lazy, name-addressed access to the tensors of one checkpoint folder."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        if not self.folder.exists():
            raise CheckpointError(f"{self.folder}: model folder does not exist")
        if not self.folder.is_dir():
            raise CheckpointError(f"{self.folder}: expected a checkpoint folder, got a file")
        if not (self.folder / "config.json").is_file():
            raise CheckpointError(f"{self.folder}: config.json not found in the model folder")
        self.files = self._weight_files()
        self._stack = ExitStack()
        self._handles: dict[Path, Any] = {}
        self._where: dict[str, Path] = {}
        for file in self.files:
            for name in self._open(file).keys():  # noqa: SIM118 (safe_open is not iterable)
                self._where[name] = file

    def _weight_files(self) -> list[Path]:
        index = self.folder / INDEX_FILE
        if index.is_file():
            try:
                weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
            except (json.JSONDecodeError, KeyError, TypeError) as e:
                raise CheckpointError(f"{index}: malformed safetensors index ({e})") from e
            files = sorted({self.folder / f for f in weight_map.values()})
            missing = [f.name for f in files if not f.is_file()]
            if missing:
                raise CheckpointError(f"{index}: lists shard(s) that are missing: {', '.join(missing)}")
            return files
        files = sorted(self.folder.glob("*.safetensors"))
        if files:
            return files
        pickles = [p for p in self.folder.iterdir() if p.suffix.lower() in PICKLE_SUFFIXES]
        if pickles:
            raise refuse_pickle(self.folder, pickles)
        raise CheckpointError(f"{self.folder}: no *.safetensors weight files found")

    def _open(self, file: Path) -> Any:
        if file not in self._handles:
            try:
                self._handles[file] = self._stack.enter_context(safe_open(str(file), framework="pt"))
            except (SafetensorError, OSError, ValueError) as e:
                raise CheckpointError(f"{file}: cannot read safetensors file ({e})") from e
        return self._handles[file]

    def __contains__(self, name: str) -> bool:
        return name in self._where

    def names(self) -> list[str]:
        return list(self._where)

    def get(self, name: str) -> torch.Tensor:
        if name not in self._where:
            raise CheckpointError(f"{self.folder}: tensor '{name}' is missing from the checkpoint")
        file = self._where[name]
        try:
            return self._open(file).get_tensor(name)
        except (SafetensorError, OSError, ValueError, RuntimeError) as e:
            raise CheckpointError(f"{file}: tensor '{name}' cannot be read ({e})") from e

    def close(self) -> None:
        self._stack.close()
        self._handles.clear()

    def __enter__(self) -> Checkpoint:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
