"""Render parameters (validated on construction), progress reports and the SDXL size buckets."""

from __future__ import annotations

import math
from dataclasses import dataclass

from PIL import Image

from engine.errors import InvalidRequestError

# The resolutions SDXL was trained on (width, height), about one megapixel each.
SDXL_BUCKETS: tuple[tuple[int, int], ...] = (
    (1024, 1024),
    (1152, 896),
    (896, 1152),
    (1216, 832),
    (832, 1216),
    (1344, 768),
    (768, 1344),
)
SCHEDULERS = ("euler", "euler_a", "dpmpp_2m_karras")
MIN_SIDE = 512
MAX_SIDE = 2048
MAX_STEPS = 150
MAX_SEED = 2**64 - 1


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True)
class RenderParams:
    """One image request. `seed=None` draws a random seed, which the result records."""

    prompt: str
    negative_prompt: str = ""
    width: int = 1024
    height: int = 1024
    steps: int = 30
    guidance: float = 5.0
    seed: int | None = None
    scheduler: str = "euler"

    def __post_init__(self) -> None:
        problems = []
        for name in ("prompt", "negative_prompt"):
            if not isinstance(getattr(self, name), str):
                problems.append(f"{name}: must be a string, got {getattr(self, name)!r}")
        for name in ("width", "height"):
            value = getattr(self, name)
            if not _is_int(value) or value % 8 or not MIN_SIDE <= value <= MAX_SIDE:
                problems.append(f"{name}: must be a multiple of 8 within {MIN_SIDE}..{MAX_SIDE}, got {value!r}")
        if not _is_int(self.steps) or not 1 <= self.steps <= MAX_STEPS:
            problems.append(f"steps: must be an integer within 1..{MAX_STEPS}, got {self.steps!r}")
        number = isinstance(self.guidance, (int, float)) and not isinstance(self.guidance, bool)
        if not number or not math.isfinite(self.guidance) or self.guidance < 0:
            problems.append(f"guidance: must be a finite number >= 0, got {self.guidance!r}")
        if self.seed is not None and (not _is_int(self.seed) or not 0 <= self.seed <= MAX_SEED):
            problems.append(f"seed: must be an integer within 0..2**64-1 or None, got {self.seed!r}")
        if self.scheduler not in SCHEDULERS:
            problems.append(f"scheduler: unknown scheduler {self.scheduler!r}; use one of {', '.join(SCHEDULERS)}")
        if problems:
            raise InvalidRequestError("invalid render parameters: " + "; ".join(problems))


@dataclass(frozen=True)
class RenderProgress:
    """Reported after each denoising step; `preview` every few steps (a cheap latent->RGB map)."""

    step: int
    total: int
    preview: Image.Image | None = None
