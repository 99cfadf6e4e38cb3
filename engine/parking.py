"""Move a model's tensors to CPU RAM and back in place, for the VRAM plan that swaps the LLM out while drawing.

Each tensor keeps its Python object; only its storage changes (`tensor.data = ...`), so every holder (modules,
bitsandbytes quant states, LoRA stacks, the KV cache lists) sees the move without being rebuilt. Anything that
remembers device addresses (CUDA graphs) must be dropped by the caller before parking.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

import torch

log = logging.getLogger(__name__)
GIB = 2**30


class ParkedTensors:
    """Tensors copied to CPU RAM (pageable: pinning gigabytes can starve a desktop PC); `restore` puts them back
    on the device they came from, with their values."""

    def __init__(self, tensors: Iterable[torch.Tensor]) -> None:
        unique = {id(t): t for t in tensors}  # a tied lm_head is the embedding tensor itself
        self._tensors = list(unique.values())
        storages = [t.untyped_storage().data_ptr() for t in self._tensors if t.numel()]
        assert len(storages) == len(set(storages)), "views sharing storage would come back as separate copies"
        self._devices = [t.device for t in self._tensors]
        self.nbytes = sum(t.numel() * t.element_size() for t in self._tensors)
        for t in self._tensors:
            t.data = t.detach().to("cpu", copy=True)
        self.parked = True

    def restore(self) -> None:
        assert self.parked, "restore once per park"
        for t, device in zip(self._tensors, self._devices, strict=True):
            t.data = t.detach().to(device, copy=True)
        self.parked = False
        log.info("the LLM is back on the GPU (%.2f GB)", self.nbytes / GIB)
