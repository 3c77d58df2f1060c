"""What the storage layer needs to know about streams, objects and WAL owners.

`MetadataStore` is the interface; sqlite.py implements it. Nothing outside
engine/storage and engine/controller may depend on which implementation is in
use. Every mutation is durable when it returns: the uploader trims the WAL
only after commit_objects returned, and garbage collection deletes an object
from S3 only after the metadata that stopped referencing it was committed.

Object states (docs/storage.md has the whole lifecycle):
    prepared      an id was taken for an upload; the object may or may not be in S3 yet
    committed     referenced by stream ranges; readable
    unreferenced  no range refers to it any more (compacted, retention, deleted topic,
                  or a prepared object whose upload never committed); deleted from S3
                  once it has been unreferenced for the grace period, then forgotten
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

from engine.storage.errors import StorageError


@dataclass(frozen=True)
class StreamMeta:
    stream_id: int
    epoch: int
    start_offset: int  # first readable offset (after trim)
    end_offset: int  # end of the data committed to objects


@dataclass(frozen=True)
class StreamRange:
    """Offsets [start_offset, end_offset) of one stream inside one object."""

    stream_id: int
    epoch: int
    start_offset: int
    end_offset: int


@dataclass(frozen=True)
class ObjectCommit:
    object_id: int
    key: str
    size: int
    kind: str  # "stream-set" or "stream"
    ranges: tuple[StreamRange, ...]
    #: CRC32C of the whole object body, for `amq storage verify`.
    crc: int = 0
    #: Payload bytes of each range, in the order of `ranges` (for retention.bytes and usage).
    range_sizes: tuple[int, ...] = ()
    #: Wall-clock ms of the newest data in the object (retention.ms); 0 = now.
    data_ms: int = 0


PREPARED, COMMITTED, UNREFERENCED = "prepared", "committed", "unreferenced"


class ObjectGone(StorageError):
    """A prepared object was given up (unreferenced by garbage collection) before its commit."""


@dataclass(frozen=True)
class RangeInfo:
    """One stream range with what compaction, retention and the inspector need to know."""

    stream_id: int
    start_offset: int
    end_offset: int
    size: int  # payload bytes of this range
    data_ms: int  # wall-clock ms of the newest data in it
    object_id: int
    key: str
    kind: str
    object_size: int


@dataclass(frozen=True)
class ObjectRecord:
    object_id: int
    key: str
    size: int
    kind: str
    state: str
    crc: int
    created_ms: int
    #: When it became unreferenced (0 while prepared or committed).
    unreferenced_ms: int
    #: Streams it still holds ranges of.
    streams: tuple[int, ...]


@dataclass(frozen=True)
class ObjectRange:
    """Where a stream's offsets live: the object holding them, for reads."""

    object_id: int
    key: str
    size: int
    stream_id: int
    start_offset: int
    end_offset: int


@dataclass(frozen=True)
class WalOwner:
    wal_id: str
    owner: str
    epoch: int


class MetadataStore(Protocol):
    async def open_stream(self, stream_id: int, epoch: int) -> StreamMeta:
        """Create the stream if new; raise FencedError if `epoch` is older than its epoch."""
        ...

    async def get_stream(self, stream_id: int) -> StreamMeta | None: ...

    def current_epochs(self, stream_ids: Iterable[int]) -> dict[int, int]:
        """Epochs as of the last refresh_epochs(). Called for every acknowledgement: must be cheap."""
        ...

    def refresh_epochs(self) -> None:
        """Bring current_epochs() up to date. The WAL calls it after each sync and before it
        acknowledges, possibly from a worker thread, so an owner fenced before the sync is seen."""
        ...

    async def next_object_id(self) -> int:
        """A fresh object id, recorded as prepared: a crash before its commit leaves it for GC."""
        ...

    async def commit_objects(self, objects: Sequence[ObjectCommit]) -> None:
        """Atomically record objects and extend their streams' committed end offsets.

        Raises FencedError when a range's epoch is not its stream's current epoch (or the
        stream was deleted), StorageError when a range does not start at the stream's end
        offset, and ObjectGone when an object is no longer prepared.
        """
        ...

    async def find_objects(self, stream_id: int, offset: int, limit: int = 16) -> list[ObjectRange]:
        """Objects holding data of the stream at or after `offset`, in offset order."""
        ...

    async def trim_stream(self, stream_id: int, epoch: int, new_start: int) -> None:
        """Move the start offset up; ranges wholly below it go, and objects left without
        ranges become unreferenced."""
        ...

    async def stream_ranges(self, stream_id: int) -> list[RangeInfo]:
        """Every range of the stream, in offset order."""
        ...

    async def object_ranges(self, object_ids: Sequence[int]) -> list[RangeInfo]:
        """The ranges these objects hold, of every stream."""
        ...

    async def replace_ranges(self, stream_id: int, old: Sequence[RangeInfo], new: Sequence[ObjectCommit]) -> bool:
        """Compaction's commit: `new` (stream objects, in offset order) take the place of ranges `old`.

        Compare-and-swap: False (nothing changed, `new` become unreferenced) if any of `old`
        is no longer there, say retention or another compactor went first.
        """
        ...

    async def delete_stream(self, stream_id: int) -> None:
        """Forget a stream (its topic was deleted); its objects become unreferenced."""
        ...

    async def list_streams(self) -> list[StreamMeta]: ...

    async def list_objects(self, states: Sequence[str] = ()) -> list[ObjectRecord]:
        """Objects in the given states (all if empty), by id."""
        ...

    async def give_up_prepared(self, older_than_ms: int) -> int:
        """Prepared objects older than that become unreferenced (their upload died). Returns how many."""
        ...

    async def forget_objects(self, object_ids: Sequence[int]) -> None:
        """Drop the rows of unreferenced objects that were deleted from S3."""
        ...

    async def acquire_wal(self, wal_id: str, owner: str) -> int:
        """Become the owner of a WAL at a new epoch; the previous owner is fenced."""
        ...

    async def wal_owner(self, wal_id: str) -> WalOwner | None: ...

    async def close(self) -> None: ...
