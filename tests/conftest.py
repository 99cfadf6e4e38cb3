"""Test-wide setup: offline, CPU only, user dirs redirected to a temp folder."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest


@pytest.fixture(autouse=True)
def _isolated_user_dirs(tmp_path_factory, monkeypatch):
    home = tmp_path_factory.mktemp("userdirs")
    monkeypatch.setenv("STORYLOOM_CONFIG_DIR", str(home / "config"))
    monkeypatch.setenv("STORYLOOM_DATA_DIR", str(home / "data"))
