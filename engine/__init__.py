"""Storyloom's inference engine: one NF4 Llama base, many LoRA adapters, continuous batching."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from engine.config import EngineConfig, ModelFootprint, SamplingParams
from engine.errors import (
    AdapterError,
    AdapterNotFoundError,
    CheckpointError,
    EngineClosedError,
    InvalidRequestError,
    QueueFullError,
    StoryloomError,
    UnsafeCheckpointError,
)
from engine.handle import GenerationResult, RequestHandle
from engine.stats import EngineStats, StepRecord

if TYPE_CHECKING:
    from engine.engine import Engine
    from engine.lora.adapter import AdapterInfo

_LAZY = {"Engine": "engine.engine", "AdapterInfo": "engine.lora.adapter"}


def __getattr__(name: str) -> Any:
    """Engine and AdapterInfo import torch; load them on first use so `engine.errors` users stay light."""
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'engine' has no attribute {name!r}")


__all__ = [
    "AdapterError",
    "AdapterInfo",
    "AdapterNotFoundError",
    "CheckpointError",
    "Engine",
    "EngineClosedError",
    "EngineConfig",
    "EngineStats",
    "GenerationResult",
    "InvalidRequestError",
    "ModelFootprint",
    "QueueFullError",
    "RequestHandle",
    "SamplingParams",
    "StepRecord",
    "StoryloomError",
    "UnsafeCheckpointError",
]
