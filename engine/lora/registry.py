"""The adapter registry (`eng.adapters`): CPU cache of parsed adapters, GPU slots with LRU eviction."""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from engine.config import EngineConfig
from engine.errors import AdapterError, AdapterNotFoundError, InvalidRequestError
from engine.lora.adapter import AdapterInfo, AdapterWeights, read_adapter
from engine.model import LlamaModel

log = logging.getLogger(__name__)


@dataclass
class _Entry:
    weights: AdapterWeights
    slot: int = -1
    users: int = 0  # submitted, not finished
    running: int = 0  # admitted to the running batch (pins the slot)
    last_used: float = 0.0
    unloading: bool = False


class AdapterRegistry:
    def __init__(
        self,
        model: LlamaModel,
        config: EngineConfig,
        device: torch.device,
        dtype: torch.dtype,
        run_on_engine: Callable[[Callable[[], Any]], Future],
    ) -> None:
        self._model = model
        self._projections = model.projections()
        self._unique = list({id(p): p for p in self._projections.values()}.values())
        self._num_slots = config.max_loras
        self._max_rank = config.max_lora_rank
        self._max_cpu = config.max_cpu_loras
        self._device = device
        self._dtype = dtype
        self._run_on_engine = run_on_engine
        self._lock = threading.Condition()
        self._entries: dict[str, _Entry] = {}
        self._slot_owner: list[str | None] = [None] * config.max_loras
        self._version = 0
        self._layout = self._stack_layout()

    # ---- public -----------------------------------------------------------------------------------------------

    def load(self, name: str, path: str | Path) -> AdapterInfo:
        """Parses and validates on the calling thread; the registry changes only if everything is valid."""
        if not name or not isinstance(name, str):
            raise AdapterError(str(name), ["the adapter name must be a non-empty string"])
        weights = read_adapter(name, path, self._model.args, self._max_rank)
        with self._lock:
            if name in self._entries:
                raise AdapterError(name, [f"an adapter named '{name}' is already loaded (unload it first)"])
            if len(self._entries) >= self._max_cpu:
                raise AdapterError(name, [f"{self._max_cpu} adapters are loaded, the configured maximum"])
            self._entries[name] = _Entry(weights)
        log.info("adapter '%s' loaded from %s (rank %d)", name, path, weights.info.rank)
        return self.get(name)

    def unload(self, name: str, timeout: float | None = None) -> None:
        """Refuses new requests for the adapter at once, waits for its running requests, then frees it."""
        with self._lock:
            entry = self._entry(name)
            entry.unloading = True
            if not self._lock.wait_for(lambda: entry.users == 0, timeout):
                entry.unloading = False
                raise TimeoutError(f"adapter '{name}' is still used by {entry.users} request(s)")
        self._run_on_engine(lambda: self._drop(name)).result()

    def get(self, name: str) -> AdapterInfo:
        with self._lock:
            entry = self._entry(name)
            state = "gpu" if entry.slot >= 0 else "cpu"
            return dataclasses.replace(entry.weights.info, state=state)

    def list(self) -> list[AdapterInfo]:
        with self._lock:
            names = sorted(self._entries)
        return [self.get(n) for n in names]

    def names(self) -> list[str]:
        with self._lock:
            return sorted(self._entries)

    def version(self) -> int:
        """Changes when captured decode graphs must be redone: a LoRA stack was allocated, or a stack's largest
        resident rank changed (the decode kernels read ranks up to it). Writing adapters into existing slots
        within those ranks keeps graphs valid."""
        return self._version

    def _stack_layout(self) -> tuple[int, ...]:
        # per projection: its stack's largest resident rank, -1 without a stack
        return tuple(-1 if p.lora is None else p.lora.active_rank for p in self._unique)

    def _note_layout(self) -> None:
        layout = self._stack_layout()
        if layout != self._layout:
            self._layout = layout
            self._version += 1

    def slots_nbytes(self) -> int:
        return sum(p.lora_nbytes() for p in self._unique)

    # ---- engine side ------------------------------------------------------------------------------------------

    def retain(self, names: list[str | None]) -> None:
        """Counts submitted requests per adapter; refuses unknown or unloading adapters before anything changes."""
        with self._lock:
            for name in names:
                if name is not None:
                    entry = self._entry(name)
                    if entry.unloading:
                        raise InvalidRequestError(f"adapter '{name}' is being unloaded; it takes no new requests")
            for name in names:
                if name is not None:
                    self._entries[name].users += 1

    def release(self, name: str | None, was_running: bool) -> None:
        if name is None:
            return
        with self._lock:
            entry = self._entries[name]
            entry.users -= 1
            if was_running:
                entry.running -= 1
            self._lock.notify_all()

    def acquire(self, names: list[str | None]) -> list[int] | None:
        """Engine thread: gives each adapter of a group a GPU slot (evicting idle ones, LRU), or None if full."""
        with self._lock:
            wanted = {n for n in names if n is not None}
            missing = [n for n in wanted if self._entries[n].slot < 0]
            idle = sorted(
                (i for i, owner in enumerate(self._slot_owner) if owner is None or self._evictable(owner, wanted)),
                key=lambda i: (self._slot_owner[i] is not None, self._last_used(self._slot_owner[i])),
            )
            if len(missing) > len(idle):
                return None
            for name, slot in zip(missing, idle, strict=False):
                self._place(name, slot)
            now = time.monotonic()
            for name in names:
                if name is not None:
                    self._entries[name].running += 1
                    self._entries[name].last_used = now
            return [self._entries[n].slot if n is not None else -1 for n in names]

    # ---- internals (lock held) ----------------------------------------------------------------------------------

    def _entry(self, name: str) -> _Entry:
        if name not in self._entries:
            raise AdapterNotFoundError(name, list(self._entries))
        return self._entries[name]

    def _evictable(self, owner: str, wanted: set[str]) -> bool:
        entry = self._entries.get(owner)
        return entry is None or (entry.running == 0 and owner not in wanted)

    def _last_used(self, owner: str | None) -> float:
        entry = self._entries.get(owner) if owner else None
        return entry.last_used if entry else 0.0

    def _place(self, name: str, slot: int) -> None:
        previous = self._slot_owner[slot]
        if previous is not None and previous in self._entries:
            self._entries[previous].slot = -1
            log.info("adapter '%s' evicted from GPU slot %d", previous, slot)
        self._clear_slot(slot)
        entry = self._entries[name]
        per_projection: dict[int, dict[int, tuple[torch.Tensor, torch.Tensor, float]]] = {}
        for (layer, module), (a, b, scale) in entry.weights.modules.items():
            proj = self._projections[(layer, module)]
            per_projection.setdefault(id(proj), {})[proj.part_index(module)] = (
                a.to(self._dtype),
                b.to(self._dtype),
                scale,
            )
        for proj in self._unique:
            if id(proj) in per_projection:
                proj.ensure_lora(self._num_slots, self._max_rank, self._device).write(slot, per_projection[id(proj)])
        entry.slot = slot
        self._slot_owner[slot] = name
        self._note_layout()
        log.info("adapter '%s' written to GPU slot %d", name, slot)

    def _clear_slot(self, slot: int) -> None:
        for proj in self._unique:
            if proj.lora is not None:
                proj.lora.clear(slot)

    def _drop(self, name: str) -> None:
        with self._lock:
            entry = self._entries.pop(name)
            if entry.slot >= 0:
                self._clear_slot(entry.slot)
                self._slot_owner[entry.slot] = None
                self._note_layout()
            self._lock.notify_all()
        log.info("adapter '%s' unloaded", name)
