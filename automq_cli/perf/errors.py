"""The one exception type that reaches the user as a single line on stderr."""

from __future__ import annotations


class PerfError(Exception):
    """A mistake the user can fix (bad workload, unreachable broker, ...).

    The CLI prints `str(err)` as one line and exits non-zero; it never shows a
    traceback for these, because the fix is in the user's input, not in amq.
    """
