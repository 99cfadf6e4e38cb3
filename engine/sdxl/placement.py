"""Put a pipeline where a VRAM plan says: resident, model offload, sequential offload (accelerate) or CPU."""

from __future__ import annotations

import gc
import logging

import torch
from diffusers import StableDiffusionXLPipeline

logger = logging.getLogger(__name__)


def apply_placement(pipe: StableDiffusionXLPipeline, placement: str, device: str) -> None:
    """Move `pipe` to `placement` from wherever it is now (hooks of an earlier placement are removed first)."""
    pipe.remove_all_hooks()
    # Sequential offload keeps the small VAE resident so a float32 re-decode can cast it in place.
    pipe._exclude_from_cpu_offload = ["vae"] if placement == "sequential_offload" else []
    if placement == "gpu":
        pipe.to(device)
    elif placement == "model_offload":
        pipe.enable_model_cpu_offload(device=device)
    elif placement == "sequential_offload":
        pipe.enable_sequential_cpu_offload(device=device)
    elif placement == "cpu":
        pipe.to("cpu") if pipe.unet.dtype == torch.float32 else pipe.to("cpu", torch.float32)
    else:
        raise AssertionError(f"unknown placement '{placement}'")
    empty_cache()
    logger.info("SDXL placement: %s on %s", placement, device)


def release_memory(pipe: StableDiffusionXLPipeline) -> None:
    """After an out-of-memory error: offloaded components back to the CPU, cached CUDA blocks returned."""
    pipe.maybe_free_model_hooks()
    empty_cache()


def empty_cache() -> None:
    if torch.cuda.is_available():
        gc.collect()
        torch.cuda.empty_cache()
