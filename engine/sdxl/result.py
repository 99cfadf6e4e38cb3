"""A finished render: the image, its full parameter record, and an atomic PNG writer."""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image
from PIL.PngImagePlugin import PngInfo

from engine.atomic import write_bytes_atomic

RECORD_KEY = "storyloom"  # PNG text chunk holding the whole record as JSON


@dataclass
class RenderResult:
    """`params` holds prompt, negative_prompt, width, height, steps, guidance, seed, scheduler, model, plan,
    tokens_used, timings and warnings: everything needed to draw the same image again."""

    image: Image.Image
    params: dict[str, Any]
    warnings: list[str] = field(default_factory=list)

    @property
    def seed(self) -> int:
        return self.params["seed"]

    def png_info(self) -> PngInfo:
        """One text chunk per parameter plus the whole record as JSON under "storyloom"."""
        info = PngInfo()
        for key, value in self.params.items():
            info.add_text(key, value if isinstance(value, str) else json.dumps(value))
        info.add_text(RECORD_KEY, json.dumps(self.params, ensure_ascii=False))
        return info

    def save(self, path: str | Path) -> Path:
        """Write a PNG with the parameters in its text chunks; atomic (temp file, fsync, rename)."""
        path = Path(path)
        buffer = io.BytesIO()
        self.image.save(buffer, format="PNG", pnginfo=self.png_info())
        write_bytes_atomic(path, buffer.getvalue())
        return path
