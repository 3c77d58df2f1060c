"""Where the event loop stalls: a watchdog thread that catches the loop's thread in the act.

The loop-lag histogram says how late the loop runs (docs/perf.md); this says what it was doing
instead. A thread asks the loop to run a no-op every `interval` seconds; when the loop has not run
it after `threshold` seconds, the thread records the loop thread's Python stack at that moment,
then how long the stall lasted. Every few seconds the stacks seen most (by the innermost frames of
this project's code) and their stall time are written to a JSON file.

A development tool: a broker runs it when AMQ_STALL_TRACE names the output file
(`AMQ_STALL_TRACE=/tmp/stalls.json amq cluster up ...`). The stack is taken while the loop's
thread may hold the GIL in C code; the thread gets to look only when the GIL is let go, so a
stall spent inside one C call is seen at its end, or not at all.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import threading
import time
import traceback
from collections import Counter
from pathlib import Path

_OURS = (os.sep + "engine" + os.sep, os.sep + "automq_cli" + os.sep)


def _where(frame: object, depth: int = 4) -> str:
    """The innermost `depth` frames of our code (else the innermost frames), one line."""
    stack = traceback.extract_stack(frame)  # type: ignore[arg-type]
    ours = [f for f in stack if any(p in f.filename for p in _OURS)] or stack
    return " <- ".join(f"{Path(f.filename).name}:{f.lineno} {f.name}" for f in reversed(ours[-depth:]))


class StallTracer:
    def __init__(self, loop: asyncio.AbstractEventLoop, out: Path, threshold: float = 0.010,
                 interval: float = 0.005, report_every: float = 5.0) -> None:  # fmt: skip
        self.loop = loop
        self.out = out
        self.threshold = threshold
        self.interval = interval
        self.report_every = report_every
        self.loop_thread = threading.get_ident()
        self.count: Counter[str] = Counter()
        self.seconds: Counter[str] = Counter()
        self.stalls = 0
        self.started = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="stall-tracer", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        reported = time.monotonic()
        while not self._stop.is_set():
            ran = threading.Event()
            asked = time.monotonic()
            try:
                self.loop.call_soon_threadsafe(ran.set)
            except RuntimeError:
                return  # the loop closed
            if not ran.wait(self.threshold):
                frame = sys._current_frames().get(self.loop_thread)
                where = _where(frame) if frame is not None else "?"
                ran.wait()
                self.stalls += 1
                self.count[where] += 1
                self.seconds[where] += time.monotonic() - asked
            if time.monotonic() - reported >= self.report_every:
                reported = time.monotonic()
                self._report()
            self._stop.wait(self.interval)
        self._report()

    def _report(self) -> None:
        top = [{"where": w, "stalls": self.count[w], "seconds": round(s, 3)}
               for w, s in self.seconds.most_common(40)]  # fmt: skip
        body = {"threshold_ms": self.threshold * 1000, "stalls": self.stalls,
                "elapsed_s": round(time.monotonic() - self.started, 1), "top": top}  # fmt: skip
        tmp = self.out.with_suffix(".tmp")
        tmp.write_text(json.dumps(body, indent=1))
        tmp.replace(self.out)


def maybe_start(loop: asyncio.AbstractEventLoop) -> StallTracer | None:
    """Start a tracer when AMQ_STALL_TRACE names its output file."""
    out = os.environ.get("AMQ_STALL_TRACE")
    if not out:
        return None
    tracer = StallTracer(loop, Path(out))
    tracer.start()
    return tracer
