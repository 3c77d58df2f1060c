"""The controller leader lease: one row in PostgreSQL says who leads, at which epoch, until when.

Expiry is judged by the database's clock only (`now()`), so controllers on hosts with
skewed clocks agree on it. Taking the lease bumps its epoch; every write of the leader
checks that epoch in the same transaction (store.py), so safety never depends on a
timer: a leader that was paused past its expiry finds its epoch gone and writes nothing.
The timers only decide how fast a standby takes over (the TTL) and when a leader that
cannot reach the database stops answering as leader (before its TTL is over).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import psycopg

from engine.postgres import PgError, connect, describe


@dataclass(frozen=True)
class LeaseInfo:
    holder: str
    address: str
    epoch: int
    expired: bool


class Lease:
    """Blocking calls (run them off the event loop); each is one statement on its own connection."""

    def __init__(self, url: str, holder: str, address: str, ttl_s: float = 3.0) -> None:
        self.url = url
        self.holder = holder
        self.address = address
        self.ttl_s = ttl_s
        self._conn: psycopg.Connection[Any] | None = None

    def _query(self, sql: str, params: tuple[Any, ...]) -> tuple[Any, ...] | None:
        try:
            if self._conn is None or self._conn.closed or self._conn.broken:
                self._conn = connect(self.url, timeout=max(1.0, self.ttl_s / 2))
            return self._conn.execute(sql, params).fetchone()  # type: ignore[arg-type]
        except psycopg.Error as e:
            if self._conn is not None:
                self._conn.close()
            self._conn = None
            raise PgError(f"controller lease: {describe(self.url, e)}") from None

    def try_acquire(self) -> int | None:
        """Take the lease if it expired (or was released): the new epoch, else None."""
        row = self._query(
            "UPDATE controller_lease SET holder=%s, address=%s, epoch=epoch+1, "
            "expires_at=now() + make_interval(secs => %s) WHERE id=1 AND expires_at < now() RETURNING epoch",
            (self.holder, self.address, self.ttl_s),
        )
        return None if row is None else int(row[0])

    def renew(self, epoch: int) -> bool:
        """Extend the lease; False if it moved to another epoch (this controller lost it)."""
        row = self._query(
            "UPDATE controller_lease SET expires_at=now() + make_interval(secs => %s) WHERE id=1 AND epoch=%s "
            "RETURNING 1",
            (self.ttl_s, epoch),
        )
        return row is not None

    def release(self, epoch: int) -> None:
        """Give the lease up at once (a clean stop): a standby need not wait for the TTL."""
        self._query("UPDATE controller_lease SET expires_at='epoch' WHERE id=1 AND epoch=%s RETURNING 1", (epoch,))

    def current(self) -> LeaseInfo:
        row = self._query("SELECT holder, address, epoch, expires_at < now() FROM controller_lease WHERE id=1", ())
        if row is None:
            return LeaseInfo("", "", 0, True)
        return LeaseInfo(str(row[0]), str(row[1]), int(row[2]), bool(row[3]))

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
