"""The stream epochs the acknowledgement path checks, shared by the SQLite and PostgreSQL stores.

Both stores keep a one-row counter, `epoch_changes`, that every change of a stream's epoch
(a stream created, raised to a new epoch, or deleted) bumps in the same transaction. The WAL
calls `refresh_epochs()` after every sync, and a refresh reads the counter:

- unchanged since the last refresh: the cache is current;
- moved only by this store's own transactions: the cache is current too, because each of
  them put its change into `epochs` before recording its counter values as its own;
- moved by anyone else (another broker took a stream over, deleted a topic): every cached
  epoch is read again, together with the counter, in one snapshot.

So a broker opening thousands of partitions, or committing uploads and compactions (they
change no epoch), costs O(1) per refresh, and an epoch raised elsewhere is still seen by the
first refresh that starts after its commit: that refresh reads a counter value that is not
one of ours.

The one race: an own transaction committed (its value is visible) but has not recorded it
yet. A refresh that read that value then would re-read everything, or worse, if it advanced
past the value before the change reached `epochs`, leave a stale epoch. So an own
epoch-changing transaction holds `commit_lock` from before its COMMIT until it has recorded
its values, and a refresh that finds values it does not know takes `commit_lock` before it
decides: by then every own value it could have read is recorded. A full re-read keeps holding
it, so no own change lands in the old dictionary while the new one is built.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable

#: Own counter values kept for a refresh to find. A store whose epochs nobody refreshes (no
#: WAL calls it) would otherwise keep them all; dropping them only costs one full re-read.
_MAX_OWN = 1 << 16


class EpochCache:
    """stream id -> epoch as of counter value `seen`, plus this store's own later changes."""

    def __init__(self) -> None:
        self.epochs: dict[int, int] = {}
        self.seen = -1
        #: Counter values above `seen` that this store's transactions produced, each recorded
        #: after its change reached `epochs`. Read without a lock by a refresh (membership and
        #: discard of a set are atomic under the GIL): the common path never waits for a COMMIT.
        self._own: set[int] = set()
        self.commit_lock = threading.Lock()
        #: Full re-reads so far (tests, and anyone wondering why refreshes cost).
        self.rereads = 0

    def covered(self, n: int) -> bool:
        """True, and the cache is at counter value `n`, if every value since the last refresh is
        one of ours. Called by one refresh at a time (the store's reader lock)."""
        seen = self.seen
        if n == seen:
            return True
        if n < seen:  # the counter went back (a restored database): trust nothing
            return False
        own = self._own
        if not all(v in own for v in range(seen + 1, n + 1)):
            return False
        for v in range(seen + 1, n + 1):
            own.discard(v)
        self.seen = n
        return True

    def record_own(self, values: Iterable[int]) -> None:
        """Counter values an own transaction produced. Call holding `commit_lock`, after its
        change is in `epochs`."""
        self._own.update(values)
        if len(self._own) > _MAX_OWN:
            self._own.clear()

    def replace(self, fresh: dict[int, int], n: int) -> None:
        """The result of a full re-read at counter value `n`. Call holding `commit_lock`: every own
        value recorded so far is at most `n` (it committed before the re-read's snapshot)."""
        self.epochs = fresh
        self.seen = n
        self._own = {v for v in self._own if v > n}
        self.rereads += 1
