"""Clock and timers for the group coordinator, injectable so tests can move time by hand."""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import time
from collections.abc import Callable
from typing import Protocol

log = logging.getLogger(__name__)


class TimerHandle(Protocol):
    def cancel(self) -> None: ...


class Timers(Protocol):
    def now_ms(self) -> int:
        """Wall-clock milliseconds: stored in commit and state timestamps."""
        ...

    def call_later(self, delay_ms: float, callback: Callable[[], None]) -> TimerHandle: ...


def _guarded(callback: Callable[[], None]) -> Callable[[], None]:
    # A failing expiry must not take the other timers (or the loop's error handler) with it.
    def run() -> None:
        try:
            callback()
        except Exception:
            log.exception("group timer callback failed")

    return run


class LoopTimers:
    """Timers on the running asyncio loop."""

    def now_ms(self) -> int:
        return int(time.time() * 1000)

    def call_later(self, delay_ms: float, callback: Callable[[], None]) -> TimerHandle:
        return asyncio.get_running_loop().call_later(max(0.0, delay_ms) / 1000.0, _guarded(callback))


class _ManualHandle:
    __slots__ = ("cancelled",)

    def __init__(self) -> None:
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class ManualTimers:
    """A clock that only moves when told to; ``advance`` fires what falls due, in order."""

    def __init__(self, start_ms: int = 1_700_000_000_000) -> None:
        self._now = start_ms
        self._heap: list[tuple[int, int, _ManualHandle, Callable[[], None]]] = []
        self._seq = itertools.count()

    def now_ms(self) -> int:
        return self._now

    def call_later(self, delay_ms: float, callback: Callable[[], None]) -> TimerHandle:
        h = _ManualHandle()
        heapq.heappush(self._heap, (self._now + max(0, int(delay_ms)), next(self._seq), h, callback))
        return h

    def advance(self, ms: int) -> None:
        target = self._now + ms
        while self._heap and self._heap[0][0] <= target:
            due, _, h, cb = heapq.heappop(self._heap)
            self._now = max(self._now, due)
            if not h.cancelled:
                cb()
        self._now = target

    def pending(self) -> int:
        return sum(1 for _, _, h, _ in self._heap if not h.cancelled)
