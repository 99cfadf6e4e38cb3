"""Engine and sampling configuration, validated on construction."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from engine.errors import InvalidRequestError

DEVICES = ("auto", "cpu", "cuda")
QUANTIZATIONS = ("nf4", "none")
KERNELS = ("auto", "bitsandbytes", "triton")


def check_render_sm_share(share: float | None) -> None:
    """Raises InvalidRequestError (a ValueError) unless share is None or strictly between 0 and 1."""
    if share is not None and not 0 < share < 1:
        raise InvalidRequestError(f"render_sm_share: must be between 0 and 1 (exclusive) or None, got {share}")


@dataclass
class EngineConfig:
    model: str | Path
    device: str = "auto"
    quantization: Literal["nf4", "none"] = "nf4"
    max_batch_size: int = 8
    max_seq_len: int = 4096
    max_loras: int = 8
    max_lora_rank: int = 64
    max_cpu_loras: int = 64
    max_queue: int = 256
    cuda_graphs: bool = True
    kernels: Literal["auto", "bitsandbytes", "triton"] = "auto"  # NF4 matmul; see engine.quant.linear.TRITON_ROWS
    render_sm_share: float | None = None  # CUDA: renders run on this share of the SMs (engine/job_stream.py)

    def __post_init__(self) -> None:
        self.model = Path(self.model)
        device = str(self.device)
        base = device.split(":", 1)[0]
        if base not in DEVICES:
            raise ValueError(f"device: unknown device '{device}'; use one of {', '.join(DEVICES)} (or cuda:N)")
        if self.quantization not in QUANTIZATIONS:
            raise ValueError(f"quantization: '{self.quantization}' is not one of {', '.join(QUANTIZATIONS)}")
        for name in (
            "max_batch_size",
            "max_seq_len",
            "max_loras",
            "max_lora_rank",
            "max_cpu_loras",
            "max_queue",
        ):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name}: must be >= 1, got {getattr(self, name)}")
        if self.max_seq_len < 2:
            raise ValueError(f"max_seq_len: must be >= 2, got {self.max_seq_len}")
        if self.kernels not in KERNELS:
            raise ValueError(f"kernels: '{self.kernels}' is not one of {', '.join(KERNELS)}")
        check_render_sm_share(self.render_sm_share)


@dataclass(frozen=True)
class SamplingParams:
    """Per-request sampling. temperature 0 means greedy."""

    max_tokens: int = 256
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    ignore_eos: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.stop, str):
            object.__setattr__(self, "stop", (self.stop,))
        else:
            object.__setattr__(self, "stop", tuple(self.stop))
        object.__setattr__(self, "stop_token_ids", tuple(int(t) for t in self.stop_token_ids))
        if not isinstance(self.max_tokens, int) or self.max_tokens < 1:
            raise ValueError(f"max_tokens: must be an integer >= 1, got {self.max_tokens!r}")
        if not math.isfinite(self.temperature) or self.temperature < 0:
            raise ValueError(f"temperature: must be >= 0, got {self.temperature!r}")
        if not (0 < self.top_p <= 1):
            raise ValueError(f"top_p: must be in (0, 1], got {self.top_p!r}")
        if self.top_k < 0:
            raise ValueError(f"top_k: must be >= 0 (0 = off), got {self.top_k!r}")
        if not math.isfinite(self.repetition_penalty) or self.repetition_penalty <= 0:
            raise ValueError(f"repetition_penalty: must be > 0, got {self.repetition_penalty!r}")
        if any(not s for s in self.stop):
            raise ValueError("stop: stop strings must not be empty")

    @property
    def is_greedy(self) -> bool:
        return self.temperature == 0 or self.top_k == 1


@dataclass
class ModelFootprint:
    """Bytes the LLM keeps on its device, for the VRAM planner and the status bar."""

    weights_bytes: int
    kv_cache_bytes: int
    lora_slots_bytes: int
    workspace_bytes: int = field(default=256 * 1024**2)

    @property
    def total_bytes(self) -> int:
        return self.weights_bytes + self.kv_cache_bytes + self.lora_slots_bytes + self.workspace_bytes
