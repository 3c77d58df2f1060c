"""The log cache never answers a read with batches that start after the offset asked for.

A broker that leads a stream again (after a reassignment away and back) caches only what
it appended since; everything before that is in S3. A read that S3 answered partly must
not continue from the cache across the gap: the consumer would skip the offsets between.
"""

from __future__ import annotations

from engine.storage.cache import CacheEntry, StreamCache
from engine.storage.objects.format import Batch


def cache_from(base: int, batches: int, records: int = 10) -> StreamCache:
    sc = StreamCache()
    for i in range(batches):
        sc.entries.append(CacheEntry(7, Batch(base + i * records, records, b"x" * 100)))
    return sc


def test_a_read_before_the_cached_range_gets_nothing_from_the_cache() -> None:
    sc = cache_from(100, 5)
    assert sc.read(50, 1 << 20, visible_end=150) == []
    assert sc.read(99, 1 << 20, visible_end=150) == []


def test_a_read_inside_the_cached_range_starts_at_the_batch_holding_the_offset() -> None:
    sc = cache_from(100, 5)
    got = sc.read(115, 1 << 20, visible_end=150)
    assert [b.base_offset for b in got] == [110, 120, 130, 140]
    assert [b.base_offset for b in sc.read(100, 1 << 20, visible_end=130)] == [100, 110, 120]
