"""The storage layer's one typed configuration, with defaults sized for a laptop."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

WalKind = Literal["file", "nfs", "s3"]


@dataclass
class WalConfig:
    kind: WalKind = "file"
    # file: a directory on this broker's disk. nfs: a directory all brokers reach (the WAL goes in <path>/<wal_id>).
    path: str = ""
    wal_id: str = "broker-0"
    # Un-uploaded data is also held in memory (the log cache) until it is in S3, so the ring's
    # size bounds that memory too; 256 MiB absorbs seconds of S3 trouble at laptop rates.
    capacity: int = 256 << 20
    # s3 kind: a WAL object goes up every interval or when this many bytes wait, whichever is first.
    s3_batch_interval_s: float = 0.25
    s3_batch_bytes: int = 8 << 20


@dataclass
class StorageConfig:
    wal: WalConfig = field(default_factory=WalConfig)
    owner: str = "broker-0"
    log_cache_bytes: int = 256 << 20
    block_cache_bytes: int = 64 << 20
    readahead_blocks: int = 4
    block_size: int = 512 << 10
    # An upload starts when this much durable data waits, or when the oldest has waited upload_interval_s.
    upload_bytes: int = 16 << 20
    upload_interval_s: float = 2.0
    max_object_bytes: int = 32 << 20
    uploads_in_flight: int = 2
    # A stream with at least this much data in one upload gets an object of its own (a stream object).
    stream_object_bytes: int = 16 << 20
    upload_retry_s: float = 0.5
    # --- object lifecycle (docs/storage.md) ---
    # Compaction writes stream objects of up to this size; it is also what compaction holds in memory.
    compaction_object_bytes: int = 32 << 20
    # Stream-set objects older than this, and the oldest beyond max_stream_set_objects, are split
    # into one stream object per stream (so a stream is spread over at most that many of them).
    stream_set_max_age_s: float = 300.0
    max_stream_set_objects: int = 64
    # Log compaction (cleanup.policy=compact) leaves data uploaded less than this long ago alone, as
    # Kafka's cleaner leaves the active segment: a consumer less than this far behind sees every
    # update of a key, not only the latest (Kafka's min.compaction.lag.ms promise), and the tail
    # stays in the log cache for it. Correctness does not depend on it (tests run with 0).
    compaction_min_lag_s: float = 30.0
    # A stream's small stream objects are merged once this many follow each other.
    compaction_min_ranges: int = 4
    # Compaction reads and writes at most this many bytes per second (S3 bandwidth it may take).
    compaction_bytes_per_s: int = 32 << 20
    # How often the broker looks at its streams for retention and compaction.
    lifecycle_interval_s: float = 10.0
    # An unreferenced object is deleted from S3 this long after it became so. No read depends on it
    # (one that finds its object gone resolves the offsets again, objects/reader.py); it spares most
    # reads in flight that extra lookup, as a fetch's GETs take well under a second. Replaced and
    # expired bytes stay in the bucket for about this long: at 60 s and a 30-minute retention that
    # was up to 20 % more than the live bytes under steady load (BENCHMARKS.md).
    gc_grace_s: float = 10.0
    # An object id taken for an upload that has not committed after this long is given up.
    prepared_timeout_s: float = 600.0
