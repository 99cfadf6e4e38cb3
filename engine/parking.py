"""Move a model's tensors to CPU RAM and back in place, for the VRAM plan that swaps the LLM out while drawing.

Each tensor keeps its Python object; only its storage changes (`tensor.data = ...`), so every holder (modules,
bitsandbytes quant states, LoRA stacks, the KV cache lists) sees the move without being rebuilt. Anything that
remembers device addresses (CUDA graphs) must be dropped by the caller before parking.
"""

from __future__ import annotations

import gc
import logging
from collections.abc import Iterable

import torch

log = logging.getLogger(__name__)
GIB = 2**30


def copied_to(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    return t.detach().to(device, copy=True)


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
        moved = 0
        try:
            for t in self._tensors:
                t.data = copied_to(t, torch.device("cpu"))
                moved += 1
        except BaseException:  # e.g. CPU RAM ran out: put back what moved, so nothing is left half parked
            for t, device in zip(self._tensors[:moved], self._devices, strict=False):
                t.data = copied_to(t, device)
            raise
        self._restored = 0  # tensors 0.._restored-1 are back
        self.parked = True

    def restore(self) -> None:
        """Out of device memory, frees the allocator's cache and tries that tensor once more; if it still does
        not fit, raises torch.OutOfMemoryError with the rest still parked, and a later call goes on from there."""
        assert self.parked, "restore once per park"
        while self._restored < len(self._tensors):
            t, device = self._tensors[self._restored], self._devices[self._restored]
            try:
                t.data = copied_to(t, device)
            except torch.OutOfMemoryError:
                gc.collect()
                if device.type == "cuda":
                    torch.cuda.empty_cache()
                t.data = copied_to(t, device)
            self._restored += 1
        self.parked = False
        log.info("the LLM is back on its device (%.2f GB)", self.nbytes / GIB)
