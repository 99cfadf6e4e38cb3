"""A finished render: the image, its full parameter record, and an atomic PNG writer."""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image
from PIL.PngImagePlugin import PngInfo

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
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                self.image.save(f, format="PNG", pnginfo=self.png_info())
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return path
