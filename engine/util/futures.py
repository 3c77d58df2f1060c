"""Waiting for several futures on the produce path without a task."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any


def when_all(futures: Sequence[asyncio.Future[Any]], timeout_s: float, then: Callable[[], None]) -> None:
    """Call `then()` once: when every future is done or `timeout_s` has passed, whichever is first.

    Callbacks on the futures and one timer, not a task with asyncio.wait: librdkafka sends one
    partition per request, so a produce waits like this once per partition produced to, and a
    task, two shields and a wait cost more than the rest of the request (docs/perf.md). `then`
    looks at which futures are done; those that are not are its to dispose of.
    """
    if not futures:
        then()
        return
    left = len(futures)
    called = False

    def finish() -> None:
        nonlocal called
        if called:
            return
        called = True
        timer.cancel()
        then()

    def one_done(_: asyncio.Future[Any]) -> None:
        nonlocal left
        left -= 1
        if left == 0:
            finish()

    timer = asyncio.get_running_loop().call_later(timeout_s, finish)
    for fut in futures:
        fut.add_done_callback(one_done)
