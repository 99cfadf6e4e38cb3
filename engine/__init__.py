"""Storyloom's inference engine: one NF4 Llama base, many LoRA adapters, continuous batching."""

from engine.config import EngineConfig, ModelFootprint, SamplingParams
from engine.engine import Engine
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
from engine.lora.adapter import AdapterInfo
from engine.stats import EngineStats, StepRecord

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
