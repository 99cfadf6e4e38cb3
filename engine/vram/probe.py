"""Read the GPU's memory through torch (imported lazily: the planner itself is pure logic)."""

from __future__ import annotations

from engine.vram.memory import GpuMemory


def query_gpu_memory(device: str = "cuda") -> GpuMemory | None:
    """Total and free memory of a CUDA device, or None when there is no CUDA GPU."""
    import torch

    if not str(device).startswith("cuda") or not torch.cuda.is_available():
        return None
    free, total = torch.cuda.mem_get_info(torch.device(device))
    return GpuMemory(total_bytes=total, free_bytes=free, name=torch.cuda.get_device_name(torch.device(device)))
