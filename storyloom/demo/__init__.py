"""Tiny random demo models: a Llama-3 with a real tokenizer, PEFT LoRA adapters and a tiny SDXL.

`ensure_demo_models(data_dir)` builds them once under `<data_dir>/demo-models/` (in a hidden temporary
folder renamed into place, so a crash or a second process never leaves half a set) and returns their paths.
The folder carries a `DEMO.txt` marker so that anything made with these models can be labelled as demo
output. Importing this package loads no torch; building does.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

DEMO_DIR_NAME = "demo-models"
MARKER_FILE = "DEMO.txt"
# Raise when the demo models change: an older set is then rebuilt.
DEMO_VERSION = 1
DEMO_LLM = {"hidden_size": 128, "num_layers": 4, "num_heads": 4, "num_kv_heads": 2, "intermediate_size": 256}
# The built-in adapters as demo PEFT folders: different ranks and target modules, as real ones would have.
DEMO_ADAPTERS: dict[str, dict] = {
    "story-writer": {
        "rank": 16,
        "alpha": 32,
        "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        "seed": 1,
    },
    "sdxl-prompter": {"rank": 8, "alpha": 16, "target_modules": ["q_proj", "v_proj", "o_proj"], "seed": 2},
}
MARKER_TEXT = """\
Storyloom demo models: tiny models with RANDOM weights, built on this computer.
They exercise the whole app quickly on any machine; their text is gibberish and their images are abstract.
Everything made with them is labelled as demo output. Set real model paths in the settings for real stories.
demo_version = {version}
"""


@dataclass(frozen=True)
class DemoModels:
    """Paths of the demo models: the LLM folder, the SDXL folder and the adapters' PEFT folders by name."""

    llm: Path
    sdxl: Path
    adapters: dict[str, Path]
    root: Path


def _paths(root: Path) -> DemoModels:
    return DemoModels(
        llm=root / "llm",
        sdxl=root / "sdxl",
        adapters={name: root / "adapters" / name for name in DEMO_ADAPTERS},
        root=root,
    )


def _is_complete(root: Path) -> bool:
    marker = root / MARKER_FILE
    return marker.is_file() and marker.read_text(encoding="utf-8") == MARKER_TEXT.format(version=DEMO_VERSION)


def is_demo_model(path: Path) -> bool:
    """True when `path` lies in a demo models folder (its output must be labelled as demo output)."""
    path = Path(path).resolve()
    return any((folder / MARKER_FILE).is_file() for folder in (path, *path.parents))


def _build(root: Path) -> None:
    import torch

    from storyloom.demo.demo_adapters import build_demo_adapter
    from storyloom.demo.tiny_llama import build_tiny_llama
    from storyloom.demo.tiny_sdxl import build_tiny_sdxl

    paths = _paths(root)
    with torch.random.fork_rng(devices=[]):  # leave the caller's random state alone
        build_tiny_llama(paths.llm, **DEMO_LLM, rope_scaling="llama3", seed=0)
        for name, spec in DEMO_ADAPTERS.items():
            build_demo_adapter(paths.adapters[name], paths.llm, **spec)
        build_tiny_sdxl(paths.sdxl, seed=0)
    # Written last: a folder with this marker is complete.
    (root / MARKER_FILE).write_text(MARKER_TEXT.format(version=DEMO_VERSION), encoding="utf-8")


def ensure_demo_models(data_dir: Path) -> DemoModels:
    """Build the demo models under `<data_dir>/demo-models/` unless a complete current set is there."""
    data_dir = Path(data_dir)
    root = data_dir / DEMO_DIR_NAME
    if _is_complete(root):
        return _paths(root)
    data_dir.mkdir(parents=True, exist_ok=True)
    log.info("building the demo models in %s (once)", root)
    staging = Path(tempfile.mkdtemp(prefix=f".{DEMO_DIR_NAME}-", dir=data_dir))
    old = data_dir / f".{DEMO_DIR_NAME}-old-{uuid.uuid4().hex[:8]}"
    try:
        _build(staging)
        if root.exists() and not _is_complete(root):
            os.rename(root, old)  # an outdated or damaged set
        try:
            os.rename(staging, root)
        except OSError as exc:
            if not _is_complete(root):  # no other process put a complete set there meanwhile
                raise OSError(f"could not move the demo models into {root}: {exc}") from exc
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)
    return _paths(root)
