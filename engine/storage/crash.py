"""Injectable crash points, for tests that kill a process at a named step.

`AMQ_CRASH_AT=<name>` makes the process exit at once (as kill -9 would: no cleanup,
no flush) the first time it reaches crash_point(<name>). Unset, it costs one dict lookup.
"""

from __future__ import annotations

import logging
import os

log = logging.getLogger(__name__)

#: The steps a test may crash at, so a typo in a test fails loudly instead of never crashing.
POINTS = frozenset({
    "compact.before_upload",
    "compact.after_upload",
    "compact.after_commit",
    "gc.during_delete",
})  # fmt: skip


def crash_point(name: str) -> None:
    if name not in POINTS:
        raise ValueError(f"unknown crash point {name!r}")
    if os.environ.get("AMQ_CRASH_AT") == name:
        log.critical("crash point %s: exiting now", name)
        logging.shutdown()
        os._exit(86)
