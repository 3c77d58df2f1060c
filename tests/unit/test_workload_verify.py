"""verify(): each kind of violation a chaos trial counts is found, and a clean read-back has none."""

from __future__ import annotations

from engine.devtools.workload import Load, Record, verify


def _load(key: bytes | None, acked: dict[int, list[tuple[int, int]]]) -> Load:
    load = Load("127.0.0.1:1", "t", key=key)  # never started: only its acknowledgements matter here
    load.acked = acked
    return load


def _log(entries: list[tuple[int, bytes | None, int]]) -> list[Record]:
    return [Record(o, k, s) for o, k, s in entries]


def test_clean_read_back_with_two_producers_sharing_a_partition() -> None:
    a = _load(b"a", {0: [(0, 0), (2, 1)]})
    b = _load(b"b", {0: [(1, 0), (3, 1)]})
    got = {0: _log([(0, b"a", 0), (1, b"b", 0), (2, b"a", 1), (3, b"b", 1), (4, b"a", 2)])}
    v = verify([a, b], got)
    assert v.ok, v.summary()
    assert (v.acked, v.read) == (4, 5)  # a record read but never acknowledged is allowed


def test_each_violation_kind() -> None:
    load = _load(b"a", {0: [(0, 0), (1, 1), (2, 2), (3, 3)], 1: [(0, 4)]})
    got = {
        # seq 1 lost (offset 1 is a hole below the end), seq 3 read twice, seq 2 before seq 0's successor order broken
        0: _log([(0, b"a", 0), (2, b"a", 3), (3, b"a", 2), (4, b"a", 3)]),
        1: _log([(0, b"a", 4)]),
    }
    v = verify([load], got)
    counts = v.counts()
    assert counts["lost"] == 1 and v.lost[0].seq == 1
    assert counts["offset_missing"] == 1 and v.offset_missing[0].offset == 1
    assert counts["duplicated"] == 1 and v.duplicated[0].seq == 3
    assert counts["reordered"] == 1 and v.reordered[0].seq == 2
    # offsets 2 and 3 hold records other than the ones acknowledged there
    assert sorted(x.offset for x in v.offset_changed) == [2, 3]
    assert not v.ok and "lost" in v.summary()


def test_offsets_going_back_are_reordered() -> None:
    load = _load(None, {0: [(0, 0), (1, 1)]})
    v = verify([load], {0: _log([(0, None, 0), (1, None, 1), (1, None, 2)])})
    assert [x.kind for x in v.violations] == ["reordered"]


def test_acknowledged_beyond_the_end_is_lost_not_a_hole() -> None:
    load = _load(None, {0: [(0, 0), (1, 1)]})
    v = verify([load], {0: _log([(0, None, 0)])})
    assert v.counts() == {"lost": 1, "duplicated": 0, "reordered": 0, "offset_missing": 0, "offset_changed": 0}
