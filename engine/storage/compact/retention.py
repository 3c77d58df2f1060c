"""Retention: where a stream's start offset may move, by age and by size.

Pure. Works in whole ranges (as Kafka works in whole segments): a range goes when all of it
is older than the age limit, or when the ranges after it alone hold at least the size limit.
A range's age is when its newest data was committed to S3 (the storage layer does not read
record timestamps), so data is kept at most upload_interval_s longer than Kafka would.
"""

from __future__ import annotations

from collections.abc import Sequence

from engine.storage.metadata.interface import RangeInfo


def retention_point(
    ranges: Sequence[RangeInfo], start_offset: int, now_ms: int, max_age_ms: int, max_bytes: int
) -> int:
    """The start offset retention allows (never lower than start_offset). A limit < 0 is no limit."""
    live = [r for r in ranges if r.end_offset > start_offset]
    total = sum(r.size for r in live)
    new_start = start_offset
    for r in live:
        too_old = max_age_ms >= 0 and r.data_ms < now_ms - max_age_ms
        too_big = max_bytes >= 0 and total - r.size >= max_bytes
        if not (too_old or too_big):
            break
        total -= r.size
        new_start = r.end_offset
    return new_start
