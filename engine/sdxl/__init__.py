"""SDXL renderer: load a local SDXL (folder or single .safetensors, offline), draw with progress and cancel."""

from engine.sdxl.errors import RenderOutOfMemoryError
from engine.sdxl.params import SCHEDULERS, SDXL_BUCKETS, RenderParams, RenderProgress
from engine.sdxl.renderer import SDXLRenderer
from engine.sdxl.result import RenderResult
from engine.vram import SDXLFootprint

__all__ = [
    "SCHEDULERS",
    "SDXL_BUCKETS",
    "RenderOutOfMemoryError",
    "RenderParams",
    "RenderProgress",
    "RenderResult",
    "SDXLFootprint",
    "SDXLRenderer",
]
