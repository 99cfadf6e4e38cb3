"""Static files shipped with Storyloom: icons, SDXL configs for offline loading, Qt styles."""

from pathlib import Path

ASSETS_DIR = Path(__file__).resolve().parent
