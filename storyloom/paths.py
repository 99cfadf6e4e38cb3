"""Where Storyloom keeps its settings and its data.

The platform's user config and data folders (platformdirs, app name "Storyloom"), unless the environment
variables `STORYLOOM_CONFIG_DIR` / `STORYLOOM_DATA_DIR` name other folders (tests and portable installs).
Nothing is created here; writers create the folders they write to.
"""

from __future__ import annotations

import os
from pathlib import Path

import platformdirs

APP_NAME = "Storyloom"
CONFIG_DIR_ENV = "STORYLOOM_CONFIG_DIR"
DATA_DIR_ENV = "STORYLOOM_DATA_DIR"
SETTINGS_FILE_NAME = "settings.toml"


def _from_env(variable: str) -> Path | None:
    value = os.environ.get(variable, "").strip()
    return Path(value).expanduser() if value else None


def config_dir() -> Path:
    """The folder of the settings file."""
    return _from_env(CONFIG_DIR_ENV) or platformdirs.user_config_path(APP_NAME, appauthor=False, roaming=True)


def data_dir() -> Path:
    """The default folder for the story library, adapters and demo models."""
    return _from_env(DATA_DIR_ENV) or platformdirs.user_data_path(APP_NAME, appauthor=False, roaming=False)


def settings_file() -> Path:
    return config_dir() / SETTINGS_FILE_NAME
