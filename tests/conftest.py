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
    monkeypatch.delenv("HF_TOKEN", raising=False)  # a developer's own token or endpoint never leaks into a test
    monkeypatch.delenv("HF_ENDPOINT", raising=False)


@pytest.fixture
def hub():
    """A fake Hugging Face hub on 127.0.0.1 (tests/test_downloads_fakehub.py); nothing reaches the network."""
    from tests.test_downloads_fakehub import FakeHub

    with FakeHub() as server:
        yield server
