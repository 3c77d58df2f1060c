"""What the storage layer needs to know about streams, objects and WAL owners.

`MetadataStore` is the interface; the controller will own the implementation
later. Nothing outside engine/storage and engine/controller may depend on
which implementation is in use. Every mutation is durable when it returns:
the uploader trims the WAL only after commit_object returned.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol


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

    async def next_object_id(self) -> int: ...

    async def commit_objects(self, objects: Sequence[ObjectCommit]) -> None:
        """Atomically record objects and extend their streams' committed end offsets.

        Raises FencedError when a range's epoch is not its stream's current epoch,
        and StorageError when a range does not start at the stream's end offset.
        """
        ...

    async def find_objects(self, stream_id: int, offset: int, limit: int = 16) -> list[ObjectRange]:
        """Objects holding data of the stream at or after `offset`, in offset order."""
        ...

    async def trim_stream(self, stream_id: int, epoch: int, new_start: int) -> None: ...

    async def acquire_wal(self, wal_id: str, owner: str) -> int:
        """Become the owner of a WAL at a new epoch; the previous owner is fenced."""
        ...

    async def wal_owner(self, wal_id: str) -> WalOwner | None: ...

    async def close(self) -> None: ...
