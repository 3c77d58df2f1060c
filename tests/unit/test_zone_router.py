"""The zone router's pure parts: proxy choice, the real-leader marker, relay objects, materialize."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import msgspec
import pytest

from engine.broker.router import Router, Tail, TailItem, TailResult, materialize, proxy_for
from engine.broker.zones import wants_real_leaders
from engine.controller.api import BrokerRecord
from engine.protocol.records import Record, build_batch, read_batches
from engine.storage import relay
from engine.storage.errors import StorageError
from engine.storage.relay import (
    Location,
    RefRecord,
    RelayLog,
    RelayRef,
    RelayUnavailable,
    SharedReader,
    relay_created_ms,
)
from engine.storage.wal.base import KIND_REF, WalRecord
from engine.storage.wal.ring import RingWal


def _brokers(*zones: str) -> list[BrokerRecord]:
    return [BrokerRecord(i, z, "127.0.0.1", 9000 + i, 1, "running") for i, z in enumerate(zones)]


def test_proxy_is_stable_spread_and_in_the_zone() -> None:
    brokers = _brokers("az1", "az1", "az1", "az2", "az3")
    picks = [proxy_for("t", p, "az1", brokers) for p in range(300)]
    assert picks == [proxy_for("t", p, "az1", list(reversed(brokers))) for p in range(300)]  # order-free
    counts = Counter(picks)
    assert set(counts) == {0, 1, 2}
    assert min(counts.values()) >= 60, counts  # spread: about 100 each
    assert proxy_for("t", 0, "az2", brokers) == 3


def test_removing_a_broker_moves_only_the_partitions_it_proxied() -> None:
    brokers = _brokers("az1", "az1", "az1")
    before = {p: proxy_for("t", p, "az1", brokers) for p in range(300)}
    after = {p: proxy_for("t", p, "az1", brokers[:2]) for p in range(300)}
    moved = {p for p in before if before[p] != after[p]}
    assert moved == {p for p in before if before[p] == 2}


def test_a_zone_without_brokers_has_no_proxy() -> None:
    assert proxy_for("t", 0, "az9", _brokers("az1", "az2")) is None
    assert proxy_for("t", 0, "az1", []) is None


@pytest.mark.parametrize(
    ("client_id", "real"),
    [("amq-cli&automq_route=leader", True), ("AUTOMQ_ROUTE=LEADER", True), ("x automq_route=leader", True),
     ("automq_route=leaderx", False), ("myautomq_route=leader", False), ("app&automq_az=az1", False), (None, False)],
)  # fmt: skip
def test_real_leader_marker(client_id: str | None, real: bool) -> None:
    assert wants_real_leaders(client_id) is real


def _batch(n: int) -> bytes:
    return bytes(build_batch([Record(key=None, value=f"v{i}".encode()) for i in range(n)], base_offset=0))


def test_materialize_gives_the_leaders_offsets_epoch_and_append_time() -> None:
    raw = _batch(3) + _batch(2)
    ref = RelayRef("relay/b/0000000000001-00000000", 0, len(raw), 0)
    out = materialize(raw, 100, RefRecord(ref, 7, 1234))
    batches = read_batches(memoryview(bytearray(out)))  # CRCs still hold
    assert [(b.base_offset, b.partition_leader_epoch) for b in batches] == [(100, 7), (103, 7)]
    assert all(b.max_timestamp == 1234 for b in batches)
    assert materialize(raw, 100, RefRecord(ref, 7, -1)) != out  # CreateTime keeps the client's times


def test_relay_log_writes_reads_and_deletes_behind_the_horizon(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(relay, "SEGMENT_MS", -1)  # a new segment file for every write

    async def run() -> None:
        store = None  # the nfs kind needs no object store
        log = RelayLog("nfs", store, str(tmp_path), "broker-1")  # type: ignore[arg-type]
        await log.open()
        reader = SharedReader("nfs", store, str(tmp_path))  # type: ignore[arg-type]
        a, b = [w.refs for w in await asyncio.gather(log.write([b"one", b"two"]), log.write([b"three"]))]
        assert a[0].key == b[0].key  # one group commit
        b = (await log.write([b"three"])).refs
        assert [await reader.read_ref(r) for r in a + b] == [b"one", b"two", b"three"]
        assert relay_created_ms(a[0].key) > 0
        with pytest.raises(RelayUnavailable):
            await reader.read_ref(RelayRef(a[0].key, a[0].offset, a[0].length, a[0].crc ^ 1))
        assert await log.delete_before(relay_created_ms(a[0].key)) == 0  # within the margin: kept
        assert a[0].key != b[0].key
        # Everything before the horizon, the last segment too once no write can go to it.
        assert await log.delete_before(relay_created_ms(b[0].key) + 10_000) == 2
        for ref in (a[0], b[0]):
            with pytest.raises(RelayUnavailable):
                await reader.read_ref(ref)
        monkeypatch.setattr(relay, "SEGMENT_MS", 60_000)
        (c,) = (await log.write([b"four"])).refs
        assert await log.delete_before(relay_created_ms(c.key) + 60_000) == 0  # still written to: kept
        assert await reader.read_ref(c) == b"four"
        again = RelayLog("nfs", store, str(tmp_path), "broker-1")  # type: ignore[arg-type]
        await again.open()
        assert again.objects_kept == log.objects_kept

    asyncio.run(run())


def test_relay_writes_on_the_loop_while_the_file_system_is_fast_else_in_a_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A fast local file system is written on the loop and not synced (the leader's WAL syncs it
    before its REF record); writes that average over the bar go to the writer thread, which
    syncs them itself. Every byte is where its reference says."""
    threads: list[str] = []
    synced: list[bool] = []
    real_append, real_sync = relay._append, os.fdatasync

    def slow(fd: int, parts: list[bytes], at: int) -> None:
        threads.append(threading.current_thread().name)
        time.sleep(0.02)
        real_append(fd, parts, at)

    def fdatasync(fd: int) -> None:
        synced.append(True)
        real_sync(fd)

    async def run() -> None:
        log = RelayLog("nfs", None, str(tmp_path), "broker-1")  # type: ignore[arg-type]
        await log.open()
        assert log.leader_syncs  # tmp_path is on a local file system
        reader = SharedReader("nfs", None, str(tmp_path))  # type: ignore[arg-type]
        monkeypatch.setattr(os, "fdatasync", fdatasync)
        fast = await log.write([b"fast"])
        assert not fast.durable and log._writer is None and not synced  # no thread, no sync
        monkeypatch.setattr(relay, "_append", slow)
        slow_ones = [await log.write([b"slow"]) for _ in range(8)]
        # One slow write is a stall, not a slow file system; a run of them is.
        assert threads[:2] == ["MainThread"] * 2 and threads[-1].startswith("relay")
        assert not slow_ones[0].durable and slow_ones[-1].durable and synced
        refs = [*fast.refs, *(r for w in slow_ones for r in w.refs)]
        assert [await reader.read_ref(r) for r in refs] == [b"fast"] + [b"slow"] * 8
        assert reader.relay_path(refs[0]) == str(tmp_path / refs[0].key)
        log.close()
        reader.close()

    asyncio.run(run())


def test_the_wal_syncs_an_unsynced_relay_file_before_the_ref_that_points_to_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No REF record may be durable before its bytes: the relay file's fdatasync comes first,
    once per file per group; a file that cannot be synced fails the group (and the WAL)."""
    relay_file = tmp_path / "relay-segment"
    relay_file.write_bytes(b"batches")
    order: list[str] = []
    real_sync, real_pwritev = os.fdatasync, os.pwritev

    def fdatasync(fd: int) -> None:
        order.append("sync " + os.readlink(f"/proc/self/fd/{fd}").rsplit("/", 1)[-1])
        real_sync(fd)

    def pwritev(fd: int, buffers: list[bytes], offset: int) -> int:
        order.append("write ring")
        return real_pwritev(fd, buffers, offset)

    async def main() -> None:
        wal = RingWal(tmp_path / "wal", 1 << 20, "test")
        await wal.open()
        monkeypatch.setattr(os, "fdatasync", fdatasync)
        monkeypatch.setattr(os, "pwritev", pwritev)
        loop = asyncio.get_running_loop()
        futures = []
        for i, path in enumerate([str(relay_file), str(relay_file), None]):
            fut: asyncio.Future[int] = loop.create_future()
            rec = WalRecord(1, 1, i, 1, b"ref", kind=KIND_REF, sync_path=path)
            wal.append(rec, lambda end, err, fut=fut: fut.set_exception(err) if err else fut.set_result(end))
            futures.append(fut)
        await asyncio.gather(*futures)
        assert order[0] == "sync relay-segment" and order[-1] == "sync wal.ring"
        assert order.count("sync relay-segment") <= 2  # once per group (the three may be one group)
        assert wal.stats.relay_sync_seconds.snapshot().count == order.count("sync relay-segment")
        gone: asyncio.Future[int] = loop.create_future()
        rec = WalRecord(1, 1, 3, 1, b"ref", kind=KIND_REF, sync_path=str(tmp_path / "deleted"))
        wal.append(rec, lambda end, err: gone.set_exception(err) if err else gone.set_result(end))
        with pytest.raises(StorageError):
            await gone
        monkeypatch.undo()
        await wal.close()

    asyncio.run(main())


def test_relay_writes_queued_in_one_turn_beyond_a_group_make_several_groups_in_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(relay, "_MAX_GROUP_BYTES", 8)  # two 5-byte payloads do not fit one group

    async def run() -> None:
        log = RelayLog("nfs", None, str(tmp_path), "broker-1")  # type: ignore[arg-type]
        await log.open()
        reader = SharedReader("nfs", None, str(tmp_path))  # type: ignore[arg-type]
        payloads = [f"pay{i:02d}".encode() for i in range(6)]
        written = await asyncio.gather(*(log.write([p]) for p in payloads))
        refs = [w.refs[0] for w in written]
        assert [r.offset for r in refs] == sorted(r.offset for r in refs)  # in call order
        assert [await reader.read_ref(r) for r in refs] == payloads
        assert log._writer is None  # every group on the loop
        log.close()
        reader.close()

    asyncio.run(run())


def test_one_stall_does_not_send_reads_and_writes_to_a_thread_but_a_slow_file_system_does() -> None:
    gate = relay.InlineGate()
    for took in [0.0003] * 50 + [0.5] + [0.0003] * 5:  # a half-second stall among fast operations
        gate.took(took)
        assert gate.inline
    slow, ops = relay.InlineGate(), 0
    while slow.inline and ops < 100:  # every operation 3 ms: a remote file system
        slow.took(0.003)
        ops += 1
    assert ops < 40
    for _ in range(1000):  # a thousand operations in threads, then the loop is tried again
        assert not slow.inline
        slow.threaded()
    assert slow.inline


def test_a_local_file_system_is_told_from_a_remote_one(tmp_path: Path) -> None:
    info = tmp_path / "mountinfo"
    info.write_text(
        "27 1 254:0 / / rw,relatime - ext4 /dev/vda rw\n"
        "40 27 0:50 / /mnt/shared\\040wal rw,relatime - nfs4 server:/export rw,vers=4.2\n"
        "41 40 0:51 / /mnt/shared\\040wal/tmp rw - tmpfs tmpfs rw\n"
    )
    local = relay.local_file_system
    assert local(Path("/srv/amq"), str(info))
    assert not local(Path("/mnt/shared wal/relay"), str(info))
    assert local(Path("/mnt/shared wal/tmp/x"), str(info))
    assert not local(Path("/x"), str(tmp_path / "missing"))  # unknown: the proxy syncs


@pytest.mark.parametrize(
    "key",
    ["../secret", "relay/../1796618028969-00000000", "/etc/passwd", "relay/b/../../x", "broker-0/wal.ring"],
)
def test_a_reference_never_reads_outside_the_relay_objects(tmp_path: Path, key: str) -> None:
    reader = SharedReader("nfs", None, str(tmp_path))  # type: ignore[arg-type]
    with pytest.raises(RelayUnavailable, match="not a relay reference"):
        asyncio.run(reader.read_ref(RelayRef(key, 0, 10, 0)))


@pytest.mark.parametrize("key", ["../wal.ring", "/abs/wal.ring", "relay/b/1796618028969-00000000"])
def test_a_frame_location_is_a_wal(tmp_path: Path, key: str) -> None:
    reader = SharedReader("nfs", None, str(tmp_path))  # type: ignore[arg-type]
    with pytest.raises(RelayUnavailable, match="not a WAL frame location"):
        asyncio.run(reader.read_frame(Location("ring", key, 0, 100, 0)))


def test_fetches_waiting_at_the_same_offset_share_one_long_poll_at_the_leader() -> None:
    """A fetch returns when any of its partitions has data; the polls it leaves at leaders are
    found by the next fetch instead of being asked for again (each would be answered too)."""
    broker = SimpleNamespace(
        config=SimpleNamespace(zone_router=True, storage=SimpleNamespace(wal=SimpleNamespace(kind="nfs")))
    )
    router = Router(broker)  # type: ignore[arg-type]
    asked: list[list[tuple[str, int, int]]] = []
    answers: list[asyncio.Future[bytes]] = []

    class Client:  # the leader's end of the channel: Tail requests in, encoded answers out
        def send(self, method: int, body: bytes) -> asyncio.Future[bytes]:
            tail = msgspec.msgpack.decode(body, type=Tail)
            asked.append([(i.topic, i.partition, i.offset) for i in tail.items])
            answers.append(asyncio.get_running_loop().create_future())
            return answers[-1]

    def answer(n: int, results: list[TailResult]) -> None:
        answers[n].set_result(msgspec.msgpack.encode(results))

    router._client = lambda leader: Client()  # type: ignore[method-assign, assignment, return-value]
    leader = SimpleNamespace(id=1)

    async def run() -> None:
        a = TailItem("t", 0, 5, 0, 1024)
        b = TailItem("t", 1, 7, 0, 1024)
        first = router.poll(leader, [a, b], 500)  # type: ignore[arg-type]
        await asyncio.sleep(0)
        later = router.poll(leader, [a, TailItem("t", 1, 8, 0, 1024)], 500)  # type: ignore[arg-type]
        await asyncio.sleep(0)
        assert later[0] is first[0]  # same partition, offset and epoch: the same poll
        assert asked == [[("t", 0, 5), ("t", 1, 7)], [("t", 1, 8)]]  # only the new offset is asked for
        answer(0, [TailResult(high_watermark=6), TailResult(high_watermark=7)])
        assert (await first[0]).high_watermark == 6 and (await first[1]).high_watermark == 7
        again = router.poll(leader, [a], 500)  # type: ignore[arg-type]
        assert again[0] is not first[0]  # an answered poll is not handed out again
        await asyncio.sleep(0)
        answers[1].set_exception(ConnectionError("leader gone"))
        answer(2, [TailResult(high_watermark=9)])
        with pytest.raises(ConnectionError):
            await later[1]
        assert (await again[0]).high_watermark == 9 and not router._polls

    asyncio.run(run())
