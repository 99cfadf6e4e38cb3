"""Waiting and running requests; slot bookkeeping only (never touches tensors)."""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Callable

from engine.sequence import Sequence

# Returns one LoRA slot per sequence (-1 = base) and pins them, or None when they cannot all be resident now.
AcquireAdapters = Callable[[list[str | None]], list[int] | None]


class Scheduler:
    def __init__(self, num_slots: int) -> None:
        self.waiting: deque[list[Sequence]] = deque()
        self.running: dict[int, Sequence] = {}
        self._free = list(range(num_slots))

    @property
    def num_waiting(self) -> int:
        return sum(len(g) for g in self.waiting)

    def add(self, group: list[Sequence]) -> None:
        self.waiting.append(group)

    def can_admit(self, group: list[Sequence]) -> bool:
        return len(group) <= len(self._free)

    def schedule(self, acquire: AcquireAdapters) -> list[Sequence]:
        """Admits waiting groups in order while slots last; a group whose adapters cannot be resident yet waits."""
        admitted: list[Sequence] = []
        for group in list(self.waiting):
            if not self.can_admit(group):
                break
            lora_slots = acquire([s.adapter for s in group])
            if lora_slots is None:
                continue
            self.waiting.remove(group)
            for seq, lora_slot in zip(group, lora_slots, strict=True):
                seq.slot = heapq.heappop(self._free)
                seq.lora_slot = lora_slot
                self.running[seq.slot] = seq
                admitted.append(seq)
        return admitted

    def remove_waiting(self, predicate: Callable[[Sequence], bool]) -> list[Sequence]:
        removed = []
        for group in list(self.waiting):
            hit = [s for s in group if predicate(s)]
            if hit:
                removed += hit
                rest = [s for s in group if not predicate(s)]
                if rest:
                    self.waiting[self.waiting.index(group)] = rest
                else:
                    self.waiting.remove(group)
        return removed

    def release(self, seq: Sequence) -> None:
        del self.running[seq.slot]
        heapq.heappush(self._free, seq.slot)
        seq.slot = -1

    def decode_rows(self) -> int:
        """Rows of the next decode batch: slots 0..n-1 where n is the highest running slot + 1."""
        return max(self.running) + 1 if self.running else 0
