"""Reads below the log cache: objects in S3 through the block cache, with readahead.

Each read resolves offsets to objects through the metadata store, fetches an
object's footer and index once (one ranged GET of its tail), then fetches only
the blocks it needs with ranged GETs. A sequential reader gets the next blocks
prefetched in the background, so a catch-up consumer mostly hits memory. All of
it runs as tasks on the event loop with S3 calls in the object store's threads:
none of it waits on, or makes wait, the append path.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import OrderedDict

from engine.storage.cache import BlockCache
from engine.storage.errors import OffsetOutOfRange, StorageError
from engine.storage.metadata.interface import MetadataStore, ObjectRange
from engine.storage.objects.format import INDEX_ENTRY, Batch, IndexEntry, parse_block, parse_footer, parse_index
from engine.storage.objects.store import NoSuchKey, ObjectStore

_TAIL_GUESS = 64 << 10
# An object deleted under a read while the range stays (nothing replaced it) is not a race: give up.
_RESOLVE_AGAIN = 3


class ObjectReader:
    def __init__(
        self,
        store: ObjectStore,
        metadata: MetadataStore,
        block_cache: BlockCache,
        readahead_blocks: int = 4,
        max_indexes: int = 4096,
    ) -> None:
        self.store = store
        self.metadata = metadata
        self.blocks = block_cache
        self.readahead_blocks = readahead_blocks
        self._indexes: OrderedDict[str, list[IndexEntry]] = OrderedDict()
        self._max_indexes = max_indexes
        self._inflight: dict[tuple[str, int], asyncio.Future[list[Batch]]] = {}
        self._background: set[asyncio.Task[object]] = set()
        #: Reads that found an object deleted under them and resolved again (the grace period ran out).
        self.resolved_again = 0

    async def read(self, stream_id: int, offset: int, max_bytes: int, end: int) -> list[Batch]:
        """Batches of the stream from `offset` (the batch holding it first) up to committed `end`.

        Ranges resolved from the metadata may name an object that garbage collection deletes
        before its GET: compaction replaced it, or retention or a topic deletion dropped it, and
        its grace period ran out while the read was in flight. The read then resolves again from
        where it is, and finds the replacement, or that the offset is gone (OffsetOutOfRange, as
        a read arriving a moment later would). Reads in flight are safe whatever the grace period.
        """
        out: list[Batch] = []
        size = 0
        pos = offset
        gone = 0
        while pos < end and (not out or size < max_bytes):
            ranges = await self.metadata.find_objects(stream_id, pos, limit=4)
            if not ranges:
                break
            if ranges[0].start_offset > pos and not out:
                # No range holds pos: log compaction's gaps belong to the range after them, so
                # retention moved the start past pos after the caller checked it.
                meta = await self.metadata.get_stream(stream_id)
                if meta is None or meta.start_offset > pos:
                    raise OffsetOutOfRange(stream_id, pos, -1 if meta is None else meta.start_offset, end)
            before = pos
            try:
                for rng in ranges:
                    while pos < rng.end_offset:
                        block_start = pos
                        for batch in await self._read_object(rng, stream_id, pos):
                            if batch.end_offset <= pos:
                                continue
                            if out and size + len(batch.payload) > max_bytes:
                                return out
                            out.append(batch)
                            size += len(batch.payload)
                            pos = batch.end_offset
                        if size >= max_bytes:
                            return out
                        if pos == block_start:
                            break
            except NoSuchKey:
                gone += 1
                self.resolved_again += 1
                if out:
                    return out
                meta = await self.metadata.get_stream(stream_id)
                if meta is None or meta.start_offset > pos:
                    start = -1 if meta is None else meta.start_offset
                    raise OffsetOutOfRange(stream_id, pos, start, end) from None
                if gone > _RESOLVE_AGAIN:
                    raise
                continue
            if pos == before:
                raise StorageError(f"stream {stream_id}: objects claim offset {pos} but hold no batch for it")
        return out

    async def _read_object(self, rng: ObjectRange, stream_id: int, offset: int) -> list[Batch]:
        index = await self._index(rng)
        entries = [e for e in index if e.stream_id == stream_id and e.end_offset > offset]
        if not entries:
            return []
        first = entries[0]
        batches = await self._block(rng.key, first)
        # Sequential readers will want what follows: fetch it before they ask.
        for e in entries[1 : 1 + self.readahead_blocks]:
            self._prefetch(rng.key, e)
        if len(entries) <= self.readahead_blocks:
            self._prefetch_next_object(stream_id, rng.end_offset)
        return batches

    def _prefetch(self, key: str, entry: IndexEntry) -> None:
        if (key, entry.position) in self._inflight or self.blocks.get((key, entry.position)) is not None:
            return
        self._spawn(self._block(key, entry))

    def _prefetch_next_object(self, stream_id: int, offset: int) -> None:
        async def go() -> None:
            nxt = await self.metadata.find_objects(stream_id, offset, limit=1)
            if nxt:
                index = await self._index(nxt[0])
                for e in [e for e in index if e.stream_id == stream_id][: self.readahead_blocks]:
                    self._prefetch(nxt[0].key, e)

        self._spawn(go())

    def _spawn(self, coro: object) -> None:
        task: asyncio.Task[object] = asyncio.ensure_future(coro)  # type: ignore[arg-type]
        self._background.add(task)

        def done(t: asyncio.Task[object]) -> None:
            self._background.discard(t)
            if not t.cancelled():
                t.exception()  # a failed prefetch only costs the later read a GET

        task.add_done_callback(done)

    async def _index(self, rng: ObjectRange) -> list[IndexEntry]:
        found = self._indexes.get(rng.key)
        if found is not None:
            self._indexes.move_to_end(rng.key)
            return found
        start = max(0, rng.size - _TAIL_GUESS)
        tail = await self.store.get(rng.key, start, rng.size)
        index_pos, index_size = parse_footer(tail)
        if index_pos >= start:
            raw = tail[index_pos - start : index_pos - start + index_size]
        else:
            raw = await self.store.get(rng.key, index_pos, index_pos + index_size)
        if index_size % INDEX_ENTRY.size or len(raw) != index_size:
            raise StorageError(f"object {rng.key}: index truncated")
        index = parse_index(raw)
        self._indexes[rng.key] = index
        if len(self._indexes) > self._max_indexes:
            self._indexes.popitem(last=False)
        return index

    async def _block(self, key: str, entry: IndexEntry) -> list[Batch]:
        ck = (key, entry.position)
        cached = self.blocks.get(ck)
        if cached is not None:
            return cached
        pending = self._inflight.get(ck)
        if pending is not None:
            return await asyncio.shield(pending)
        fut: asyncio.Future[list[Batch]] = asyncio.get_running_loop().create_future()
        self._inflight[ck] = fut
        try:
            data = await self.store.get(key, entry.position, entry.position + entry.size)
            batches = parse_block(data)
            self.blocks.put(ck, batches, entry.size)
            fut.set_result(batches)
            return batches
        except BaseException as e:
            fut.set_exception(e)
            with contextlib.suppress(BaseException):
                fut.exception()
            raise
        finally:
            del self._inflight[ck]

    async def close(self) -> None:
        for t in list(self._background):
            t.cancel()
        for t in list(self._background):
            with contextlib.suppress(BaseException):
                await t
