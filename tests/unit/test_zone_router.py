"""The zone router's pure parts: proxy choice, the real-leader marker, relay objects, materialize."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import msgspec
import pytest

from engine.broker.errors import BrokerError
from engine.broker.router import Moved, Router, TailEntry, TailItem, TailResult, Watch, materialize, proxy_for
from engine.broker.zones import wants_real_leaders
from engine.controller.api import BrokerRecord
from engine.protocol import ErrorCode
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


def _proxy_router() -> Router:
    broker = SimpleNamespace(
        config=SimpleNamespace(zone_router=True, storage=SimpleNamespace(wal=SimpleNamespace(kind="nfs")))
    )
    return Router(broker)  # type: ignore[arg-type]


def _entry(base: int, count: int, key: int = 0) -> TailEntry:
    return TailEntry(base, count, 0, key, 100 * base, 10 * count)


def test_a_proxy_watches_a_partition_once_and_serves_fetches_from_its_notices() -> None:
    """Fetches that wait at a partition's end share one Watch at its leader; the leader's notices
    (ends and where the batches are) answer the fetches that follow without asking it."""
    router = _proxy_router()
    watches: list[list[tuple[str, int, int]]] = []
    notify: list[Callable[[bytes | BaseException], None]] = []

    class Client:  # the proxy's end of the channel to the leader
        def watch(self, body: bytes, on_notice: Callable[[bytes | BaseException], None]) -> None:
            watches.append([(i.topic, i.partition, i.offset) for i in msgspec.msgpack.decode(body, type=Watch).items])
            notify.append(on_notice)

    def notice(*moved: Moved) -> None:
        notify[-1](msgspec.msgpack.encode(list(moved)))

    router._client = lambda leader: Client()  # type: ignore[method-assign, assignment, return-value]
    leader = SimpleNamespace(id=1)

    async def run() -> None:
        a, b = TailItem("t", 0, 5, 0, 1024), TailItem("t", 1, 7, 0, 1024)
        first = router.watch(leader, [a, b])  # type: ignore[arg-type]
        again = router.watch(leader, [a, b])  # type: ignore[arg-type]
        assert watches == [[("t", 0, 5), ("t", 1, 7)]]  # watched once, not per fetch
        assert again == first and not any(f.done() for f in first)
        notice(Moved("t", 0, TailResult(0, None, 6, 0, 0, 3, 0, [_entry(5, 1)], ["relay/x"])))
        assert first[0].done() and not first[1].done()
        got = router.known_tail("t", 0, 5, 0)
        assert got is not None and [e.base_offset for e in got.entries] == [5]
        assert got.entries[0].location(got.keys).key == "relay/x"
        caught_up = router.known_tail("t", 0, 6, 0)
        assert caught_up is not None and caught_up.high_watermark == 6 and not caught_up.entries
        assert router.known_tail("t", 0, 4, 0) is None  # before what the notices located: ask
        assert router.known_tail("t", 0, 5, 1) is None  # another leader epoch: the leader must check it
        assert router.known_tail("t", 1, 7, 0) is None  # watched, nothing heard yet
        # Contiguous notices extend what is known; keys are mapped into the window's own list.
        notice(Moved("t", 0, TailResult(0, None, 8, 0, 0, 3, 0, [_entry(6, 2)], ["relay/y"])))
        got = router.known_tail("t", 0, 5, 0)
        assert got is not None and [(e.base_offset, e.location(got.keys).key) for e in got.entries] == [
            (5, "relay/x"), (6, "relay/y")]  # fmt: skip
        assert router.known_tail("t", 0, 7, 0) is not None  # inside the batch at 6
        # A Tail answer older than the notices (read a turn later) does not move the end back.
        router._windows[("t", 0)].learn(TailResult(0, None, 6, 0, 0, 3, 0, [_entry(5, 1)], ["relay/x"]))
        assert router.known_tail("t", 0, 8, 0) is not None and router.known_tail("t", 0, 6, 0) is not None
        # A Tail answer is learned too, its own entries left as they were (the caller reads them).
        answer = TailResult(0, None, 9, 0, 0, 3, 0, [_entry(8, 1, key=1)], ["relay/a", "relay/b"])
        router._windows[("t", 0)].learn(answer)
        assert answer.entries[0].location(answer.keys).key == "relay/b"
        got = router.known_tail("t", 0, 8, 0)
        assert got is not None and got.entries[0].location(got.keys).key == "relay/b"
        # An error ends the partition's watch (it moved): fetches ask the leader again.
        notice(Moved("t", 0, TailResult(int(ErrorCode.NOT_LEADER_OR_FOLLOWER), "moved")))
        assert router.known_tail("t", 0, 8, 0) is None
        router.watch(leader, [TailItem("t", 0, 8, 0, 1024)])  # type: ignore[arg-type]
        assert watches[-1] == [("t", 0, 8)]
        # The connection failed: every watch of that leader ends and wakes its fetches.
        waiting = router.watch(leader, [b])  # type: ignore[arg-type]
        notify[-1](ConnectionError("leader gone"))
        assert waiting[0].done() and router.known_tail("t", 1, 7, 0) is None
        router.watch(leader, [b])  # type: ignore[arg-type]
        assert watches[-1] == [("t", 1, 7)]
        # A long answer (a consumer far behind) leaves only its last stretch in the window.
        window = router._windows[("t", 1)]
        window.learn(TailResult(0, None, 300, 0, 0, 5, 0, [_entry(200 + i, 1) for i in range(100)], ["relay/z"]))
        assert [e.base_offset for e in window.entries] == list(range(236, 300)) and window.keys == ["relay/z"]

    asyncio.run(run())


class _Stream:
    def __init__(self, stream_id: int, end: int) -> None:
        self.stream_id, self.end_offset, self.start_offset, self.committed_offset = stream_id, end, 0, 0
        self.waiters: list[asyncio.Future[None]] = []

    def add_data_waiter(self, fut: asyncio.Future[None]) -> None:
        self.waiters.append(fut)

    def move_to(self, end: int) -> None:
        self.end_offset = end
        waiters, self.waiters = self.waiters, []
        for w in waiters:
            if not w.done():
                w.set_result(None)


class _Part:
    leader_epoch = 4

    def __init__(self, stream: _Stream) -> None:
        self.ready = stream

    def check_leader_epoch(self, epoch: int) -> None:
        if epoch not in (-1, self.leader_epoch):
            raise BrokerError(ErrorCode.FENCED_LEADER_EPOCH, "old epoch")


def test_a_leader_pushes_one_notice_per_proxy_for_the_partitions_that_moved_in_a_turn() -> None:
    router = _proxy_router()
    streams = {("t", 0): _Stream(10, 5), ("t", 1): _Stream(11, 7)}
    parts: dict[tuple[str, int], _Part] = {k: _Part(s) for k, s in streams.items()}
    router.broker.partition_now = lambda topic, index: parts.get((topic, index))  # type: ignore[attr-defined]
    located: list[tuple[int, int, int]] = []

    def locations(stream_id: int, offset: int, end: int, max_bytes: int) -> tuple[list[TailEntry], list[str]]:
        located.append((stream_id, offset, end))
        return [_entry(offset, end - offset)], [f"relay/{stream_id}"]

    router._locations = locations  # type: ignore[method-assign]
    sent: list[tuple[int, list[Moved]]] = []

    def send(parts_: list[bytes]) -> None:
        data = b"".join(parts_)[4:]
        sent.append((int.from_bytes(data[:4], "big"), msgspec.msgpack.decode(data[4:], type=list[Moved])))

    async def turn() -> None:
        for _ in range(3):
            await asyncio.sleep(0)

    async def run() -> None:
        router._watch(Watch([TailItem("t", 0, 5, 4, 1024), TailItem("t", 1, 6, 4, 1024)]), 7, send)
        await turn()
        # Partition 1 had moved past the proxy's offset already: told at once; partition 0 not.
        assert [(c, [(m.partition, m.result.high_watermark) for m in ms]) for c, ms in sent] == [(7, [(1, 7)])]
        assert sent[0][1][0].result.entries[0].base_offset == 6 and sent[0][1][0].result.stream_id == 11
        streams[("t", 0)].move_to(6)
        streams[("t", 1)].move_to(9)
        await turn()
        assert len(sent) == 2  # both moves in one notice
        assert sorted((m.partition, m.result.high_watermark) for m in sent[1][1]) == [(0, 6), (1, 9)]
        assert sorted(located[1:]) == [(10, 5, 6), (11, 7, 9)]  # each from where the last notice ended
        # Renewing keeps the offset (nothing re-sent); another leader epoch is refused and unwatched.
        router._watch(Watch([TailItem("t", 0, 0, 4, 1024)]), 7, send)
        await turn()
        assert len(sent) == 2
        router._watch(Watch([TailItem("t", 0, 6, 3, 1024)]), 7, send)
        await turn()
        assert sent[2][1][0].result.error_code == ErrorCode.FENCED_LEADER_EPOCH
        assert ("t", 0) not in router._watched_by
        # A partition no longer led here ends its watch with an error; an expired item goes quietly.
        del parts[("t", 1)]
        streams[("t", 1)].move_to(10)
        await turn()
        assert sent[3][1][0].result.error_code == ErrorCode.NOT_LEADER_OR_FOLLOWER and not router._watchers
        parts[("t", 1)] = _Part(streams[("t", 1)])
        router._watch(Watch([TailItem("t", 1, 10, 4, 1024)]), 8, send)
        await turn()
        router._watchers[send].items[("t", 1)].expires = 0.0
        streams[("t", 1)].move_to(11)
        await turn()
        assert len(sent) == 4 and not router._watchers and not router._watched_by

    asyncio.run(run())


_PROXY_THAT_DIES = """
import asyncio, os, signal, sys
import msgspec
from engine.storage.relay import RelayLog

async def main() -> None:
    log = RelayLog("nfs", None, sys.argv[1], "broker-9")
    await log.open()
    assert log.leader_syncs  # a local file system: the proxy leaves the fdatasync to the leader
    written = await log.write([b"first batch", b"second batch"])
    assert not written.durable
    sys.stdout.buffer.write(msgspec.json.encode(written.refs) + b"\\n")
    sys.stdout.flush()
    os.kill(os.getpid(), signal.SIGKILL)  # before any sync, close or cleanup

asyncio.run(main())
"""


def test_the_leader_makes_a_killed_proxys_unsynced_relay_write_durable(tmp_path: Path) -> None:
    """kill -9 of a proxy right after its unsynced relay write (AppendRefs sent): the bytes are the
    kernel's, not the process's; the leader's WAL syncs the file before the REF records, and a
    restarted leader finds the REFs and reads the bytes back."""
    relay_dir = tmp_path / "shared"
    relay_dir.mkdir()
    proc = subprocess.run(
        [sys.executable, "-c", _PROXY_THAT_DIES, str(relay_dir)],
        capture_output=True,
        timeout=60,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert proc.returncode == -9, proc.stderr.decode()
    refs = msgspec.json.decode(proc.stdout.splitlines()[0], type=list[RelayRef])
    reader = SharedReader("nfs", None, str(relay_dir))  # type: ignore[arg-type]

    async def main() -> list[WalRecord]:
        wal = RingWal(tmp_path / "wal", 1 << 20, "test")
        await wal.open()
        loop = asyncio.get_running_loop()
        done = []
        for i, ref in enumerate(refs):
            fut: asyncio.Future[int] = loop.create_future()
            rec = WalRecord(1, 1, i, 1, msgspec.msgpack.encode(ref), kind=KIND_REF, sync_path=reader.relay_path(ref))
            wal.append(rec, lambda end, err, fut=fut: fut.set_exception(err) if err else fut.set_result(end))
            done.append(fut)
        await asyncio.gather(*done)
        assert wal.stats.relay_sync_seconds.snapshot().count >= 1
        await wal.close()
        again = RingWal(tmp_path / "wal", 1 << 20, "test")
        recovered = await again.open()
        await again.close()
        return recovered

    recovered = asyncio.run(main())
    assert [msgspec.msgpack.decode(r.payload, type=RelayRef) for r in recovered if r.kind == KIND_REF] == refs
    assert [asyncio.run(reader.read_ref(r)) for r in refs] == [b"first batch", b"second batch"]
    reader.close()
