"""Log compaction of cleanup.policy=compact topics: the latest record per key is kept.

Kafka's log cleaner, on amq's storage: the storage compactor reads the stream twice
(Compactor.filter_stream) and this module decides per record. The first pass maps each key
(hashed, as Kafka's offset map does, so memory is 16 bytes per key whatever the key's size)
to its last offset; the second keeps a record if it is that last one, or has no key.
Tombstones (null values) are kept until their upload is older than delete.retention.ms.

Offsets are preserved: a batch that lost records is rebuilt with its records' own offsets
and its original last offset (so producer state read from it is unchanged); a batch that
lost all of them is dropped, leaving a gap, as in Kafka, except the last one rewritten (the
rewritten ranges end where it ends). Control batches are kept as they are.
"""

from __future__ import annotations

import hashlib

from engine.protocol.errors import CorruptRecords
from engine.protocol.records import Record, RecordBatch, batch_records, build_batch, read_batches
from engine.storage.objects.format import Batch


def _key_hash(key: bytes) -> bytes:
    return hashlib.blake2b(key, digest_size=16).digest()


def _batches(payload: bytes) -> list[RecordBatch] | None:
    try:
        return read_batches(payload, verify_crc=False)
    except CorruptRecords:
        return None  # not Kafka batches (an internal stream's own format): kept as they are


def _records(payload: bytes, rb: RecordBatch) -> list[Record] | None:
    """The batch's records, or None if they do not decode.

    Produce stores batches as clients send them, without inflating them, so a batch that
    inflates past the bound (a compression bomb, found by benchmarks/fuzz.py) or holds damaged
    records can be in a stream. Compaction keeps such a batch as it is: it cannot know its keys,
    and raising would stop every later pass over the partition."""
    try:
        return batch_records(payload, rb)
    except CorruptRecords:
        return None


class KeyCleaner:
    """A storage RecordFilter (engine/storage/compact/compactor.py) for one compaction pass."""

    def __init__(self, now_ms: int, delete_retention_ms: int) -> None:
        self.now_ms = now_ms
        self.delete_retention_ms = delete_retention_ms
        self.latest: dict[bytes, int] = {}
        self.records_in = 0
        self.records_out = 0

    def observe(self, batch: Batch) -> None:
        for rb in _batches(batch.payload) or []:
            if rb.is_control:
                continue
            for r in _records(batch.payload, rb) or []:
                if r.key is not None:
                    self.latest[_key_hash(r.key)] = r.offset

    def rewrite(self, batch: Batch, data_ms: int, last: bool) -> Batch | None:
        kafka = _batches(batch.payload)
        if kafka is None:
            return batch
        tombstones_expired = data_ms < self.now_ms - self.delete_retention_ms
        parts: list[tuple[RecordBatch, bytes]] = []
        changed = False
        for rb in kafka:
            original = batch.payload[rb.position : rb.end]
            if rb.is_control:
                parts.append((rb, original))
                continue
            records = _records(batch.payload, rb)
            if records is None:
                parts.append((rb, original))
                continue
            self.records_in += len(records)
            kept = [
                r
                for r in records
                if r.key is None
                or (self.latest.get(_key_hash(r.key)) == r.offset and not (r.value is None and tombstones_expired))
            ]
            if last and rb is kafka[-1] and not kept:
                # The last batch rewritten stays: where it ends is where the rewritten ranges end.
                kept = records[-1:]
            self.records_out += len(kept)
            if len(kept) == len(records):
                parts.append((rb, original))
                continue
            changed = True
            if kept:
                parts.append((rb, build_batch(
                    kept, base_offset=rb.base_offset, compression=rb.compression, timestamp_type=rb.timestamp_type,
                    producer_id=rb.producer_id, producer_epoch=rb.producer_epoch, base_sequence=rb.base_sequence,
                    partition_leader_epoch=rb.partition_leader_epoch, is_transactional=rb.is_transactional,
                    keep_offsets=True, last_offset_delta=rb.last_offset_delta,
                )))  # fmt: skip
        if not changed:
            return batch
        if not parts:
            return None
        # The batch spans exactly its Kafka batches: a consumer fetching from the end of one must
        # not be handed it again.
        first, end = parts[0][0].base_offset, parts[-1][0].next_offset
        return Batch(first, end - first, b"".join(p for _, p in parts))
