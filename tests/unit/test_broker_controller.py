"""Controller state: Kafka's validation codes, epochs, the version log, persistence; the RPC round trip."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from engine.broker.image import MetadataImage
from engine.controller.api import WalSpec
from engine.controller.configs import ConfigError, apply_ops, validate_config, validate_topic_name
from engine.controller.rpc import ControllerClient, RpcError
from engine.controller.server import ControllerServer
from engine.controller.state import ControllerState
from engine.protocol import ErrorCode


@pytest.fixture
def state(metadata_spec: str) -> Iterator[ControllerState]:
    """On each backend: an SQLite file, then a PostgreSQL database (tests/conftest.py)."""
    s = ControllerState(metadata_spec)
    join(s, 0, "az1")
    yield s
    s.close()


def join(s: ControllerState, broker_id: int, zone: str, kind: str = "nfs") -> int:
    """Register and report ready, as a broker does at start; returns its epoch."""
    b, _ = s.register_broker(broker_id, zone, "127.0.0.1", 9092 + broker_id, WalSpec(kind, "/w", f"broker-{broker_id}"))
    s.broker_ready(broker_id, b.epoch)
    return b.epoch


def codes(results: list[dict[str, object]]) -> list[ErrorCode]:
    return [ErrorCode(int(r["error_code"])) for r in results]  # type: ignore[call-overload]


@pytest.mark.parametrize(
    ("name", "ok"),
    [("a", True), ("a.b_c-D9", True), ("", False), (".", False), ("..", False), ("a b", False), ("x" * 250, False),
     ("é", False)],
)  # fmt: skip
def test_topic_names(name: str, ok: bool) -> None:
    if ok:
        validate_topic_name(name)
    else:
        with pytest.raises(ConfigError) as e:
            validate_topic_name(name)
        assert e.value.code == ErrorCode.INVALID_TOPIC_EXCEPTION


def test_create_topic_errors(state: ControllerState) -> None:
    results = state.create_topics(
        [
            {"name": "ok", "num_partitions": 3, "replication_factor": 1},
            {"name": "ok", "num_partitions": 1, "replication_factor": 1},
            {"name": "bad/name", "num_partitions": 1, "replication_factor": 1},
            {"name": "zero", "num_partitions": 0, "replication_factor": 1},
            {"name": "rf", "num_partitions": 1, "replication_factor": 3},
            {"name": "cfg", "num_partitions": 1, "replication_factor": 1, "configs": {"nope": "1"}},
            {"name": "val", "num_partitions": 1, "replication_factor": 1, "configs": {"retention.ms": "soon"}},
            {"name": "__consumer_offsets", "num_partitions": 1, "replication_factor": 1},
        ],
        validate_only=False,
        internal=False,
    )
    assert codes(results) == [
        ErrorCode.NONE,
        ErrorCode.TOPIC_ALREADY_EXISTS,
        ErrorCode.INVALID_TOPIC_EXCEPTION,
        ErrorCode.INVALID_PARTITIONS,
        ErrorCode.INVALID_REPLICATION_FACTOR,
        ErrorCode.INVALID_CONFIG,
        ErrorCode.INVALID_CONFIG,
        ErrorCode.INVALID_REQUEST,
    ]
    ok = state.topics["ok"]
    assert [p.index for p in ok.partitions] == [0, 1, 2]
    assert len({p.stream_id for p in ok.partitions}) == 3
    assert all(p.leader == 0 for p in ok.partitions)


def test_dot_underscore_collision(state: ControllerState) -> None:
    assert codes(
        state.create_topics([{"name": "a.b", "num_partitions": 1, "replication_factor": 1}], False, False)
    ) == [ErrorCode.NONE]
    assert codes(
        state.create_topics([{"name": "a_b", "num_partitions": 1, "replication_factor": 1}], False, False)
    ) == [ErrorCode.INVALID_TOPIC_EXCEPTION]


def test_validate_only_creates_nothing(state: ControllerState) -> None:
    v = state.version
    assert codes(state.create_topics([{"name": "t", "num_partitions": 2, "replication_factor": 1}], True, False)) == [
        ErrorCode.NONE
    ]
    assert "t" not in state.topics and state.version == v


def test_partitions_configs_delete(state: ControllerState) -> None:
    state.create_topics([{"name": "t", "num_partitions": 2, "replication_factor": 1}], False, False)
    assert codes(state.create_partitions([{"name": "t", "count": 2}], False)) == [ErrorCode.INVALID_PARTITIONS]
    assert codes(state.create_partitions([{"name": "nope", "count": 2}], False)) == [
        ErrorCode.UNKNOWN_TOPIC_OR_PARTITION
    ]
    assert codes(state.create_partitions([{"name": "t", "count": 4}], False)) == [ErrorCode.NONE]
    assert len(state.topics["t"].partitions) == 4
    ops = [{"name": "retention.ms", "op": "set", "value": "1000"}, {"name": "cleanup.policy", "op": "append",
                                                                      "value": "compact"}]  # fmt: skip
    assert codes(state.alter_configs([{"name": "t", "ops": ops}], True, False)) == [ErrorCode.NONE]
    assert state.topics["t"].configs == {"retention.ms": "1000", "cleanup.policy": "delete,compact"}
    bad = [{"name": "retention.ms", "op": "set", "value": "-5"}]
    assert codes(state.alter_configs([{"name": "t", "ops": bad}], True, False)) == [ErrorCode.INVALID_CONFIG]
    # Legacy AlterConfigs replaces the whole set.
    assert codes(state.alter_configs([{"name": "t", "ops": [{"name": "segment.ms", "value": "5"}]}], False, False)) == [
        ErrorCode.NONE
    ]
    assert state.topics["t"].configs == {"segment.ms": "5"}
    assert codes(state.delete_topics(["t", "t2"])) == [ErrorCode.NONE, ErrorCode.UNKNOWN_TOPIC_OR_PARTITION]
    assert "t" not in state.topics


def test_registration_bumps_leader_epochs_and_state_persists(metadata_spec: str) -> None:
    s = ControllerState(metadata_spec)
    assert join(s, 0, "az1") == 1
    s.create_topics([{"name": "t", "num_partitions": 2, "replication_factor": 1}], False, False)
    assert [p.leader_epoch for p in s.topics["t"].partitions] == [0, 0]
    assert join(s, 0, "az1") == 2
    assert [p.leader_epoch for p in s.topics["t"].partitions] == [1, 1]
    pid = s.alloc_producer_ids(10)
    version = s.version
    s.close()
    again = ControllerState(metadata_spec)
    assert again.version == version
    assert [p.leader_epoch for p in again.topics["t"].partitions] == [1, 1]
    assert again.alloc_producer_ids(10) == pid + 10
    assert again.brokers[0].epoch == 2
    # A follower from before the restart gets a snapshot: the record log is not persisted.
    assert "snapshot" in again.changes_since(version - 1)
    assert again.changes_since(version) == {"version": version, "records": []}


def test_image_follows_records_and_snapshots(state: ControllerState) -> None:
    image = MetadataImage()
    image.apply(state.changes_since(0))
    v = image.version
    state.create_topics([{"name": "t", "num_partitions": 1, "replication_factor": 1}], False, False)
    changes = state.changes_since(v)
    assert "records" in changes
    assert image.apply(changes) == {"t"}
    assert image.topics["t"].partitions[0].leader == 0
    state.delete_topics(["t"])
    image.apply(state.changes_since(image.version))
    assert "t" not in image.topics and not image.topics_by_id


def test_config_values() -> None:
    assert validate_config("message.timestamp.type", "LogAppendTime") == "LogAppendTime"
    assert validate_config("preallocate", "TRUE") == "true"
    for name, value in [("message.timestamp.type", "Now"), ("max.message.bytes", "x"), ("segment.bytes", "3"),
                        ("retention.ms", None), ("min.cleanable.dirty.ratio", "2")]:  # fmt: skip
        with pytest.raises(ConfigError):
            validate_config(name, value)
    with pytest.raises(ConfigError):
        apply_ops({}, [{"name": "retention.ms", "op": "append", "value": "1"}], True)


def test_rpc_round_trip_and_long_poll(tmp_path: Path) -> None:
    async def go() -> None:
        server = ControllerServer(tmp_path, port=0, session_timeout_ms=300)
        await server.start()
        client = ControllerClient("127.0.0.1", server.port)
        try:
            reg = await client.call("register_broker", broker_id=0, zone="az1", host="h", port=1)
            await client.call("broker_ready", broker_id=0, broker_epoch=reg["broker_epoch"])
            snap = await client.call("metadata", since=0)
            v = snap["version"]
            poll = asyncio.ensure_future(client.call("metadata", since=v, wait_ms=5000))
            await asyncio.sleep(0.1)
            assert not poll.done()
            res = await client.call(
                "create_topics", topics=[{"name": "t", "num_partitions": 1, "replication_factor": 1}]
            )
            assert res["results"][0]["error_code"] == 0
            changes = await asyncio.wait_for(poll, 2)
            assert [r["type"] for r in changes["records"]] == ["topic"]
            with pytest.raises(RpcError) as e:
                await client.call("heartbeat", broker_id=0, broker_epoch=reg["broker_epoch"] + 1)
            assert e.value.code == "STALE_BROKER_EPOCH"
            with pytest.raises(RpcError) as e:
                await client.call("heartbeat", broker_id="zero", broker_epoch=1)
            assert e.value.code == "BAD_REQUEST"
            await asyncio.sleep(0.8)  # no heartbeats: the broker is fenced
            status = await client.call("status")
            assert status["brokers"][0]["alive"] is False and status["brokers"][0]["state"] == "fenced"
            assert status["topics"] == 1 and status["offline_partitions"] == 1
            # Nobody is left to take its nfs WAL over: the takeover waits, and says why.
            assert [t["state"] for t in status["wal_takeovers"]] == ["waiting"]
            with pytest.raises(RpcError) as e:
                await client.call("heartbeat", broker_id=0, broker_epoch=reg["broker_epoch"])
            assert e.value.code == "STALE_BROKER_EPOCH"
            # The broker comes back as a new incarnation and leads its partition again.
            again = await client.call("register_broker", broker_id=0, zone="az1", host="h", port=1)
            assert again["broker_epoch"] > reg["broker_epoch"] and again["wal_taken_over"] is False
            await client.call("broker_ready", broker_id=0, broker_epoch=again["broker_epoch"])
            status = await client.call("status")
            assert status["brokers"][0]["alive"] is True and status["offline_partitions"] == 0
        finally:
            await client.close()
            await server.stop()

    asyncio.run(go())


def test_placement_alternates_zones_and_spreads_brokers(metadata_spec: str) -> None:
    s = ControllerState(metadata_spec)
    for i, zone in enumerate(["az1", "az2", "az3", "az1", "az2", "az3"]):
        join(s, i, zone)
    s.create_topics([{"name": "t", "num_partitions": 12, "replication_factor": 1}], False, False)
    leaders = [p.leader for p in s.topics["t"].partitions]
    zones = [s.brokers[b].zone for b in leaders]
    assert all(zones[i] != zones[i + 1] for i in range(len(zones) - 1))
    assert sorted(leaders.count(b) for b in range(6)) == [2] * 6
    # Internal topics are placed the same way, so group coordinators spread too.
    s.create_topics([{"name": "__consumer_offsets", "num_partitions": 50, "replication_factor": 1}], False, True)
    led = s.partitions_led()
    assert max(led.values()) - min(led.values()) <= 1


def test_failover_fences_then_takeover_reopens_spread(metadata_spec: str) -> None:
    s = ControllerState(metadata_spec)
    epochs = {i: join(s, i, f"az{i + 1}", kind="file") for i in range(3)}
    join(s, 3, "az2", kind="file")
    s.create_topics([{"name": "t", "num_partitions": 12, "replication_factor": 1}], False, False)
    lost = [p for p in s.topics["t"].partitions if p.leader == 1]
    assert lost
    s.last_seen[1] = 0.0  # broker 1 (az2) went silent
    for b in (0, 2, 3):
        s.heartbeat(b, s.brokers[b].epoch)
    assert s.expire(3.0) == [1]
    assert s.brokers[1].state == "fenced" and s.brokers[1].epoch == epochs[1] + 1
    (t,) = s.takeovers.values()
    # A file WAL is a zonal volume: only broker 3, the other broker of az2, can take it over.
    assert (t.state, t.to_broker, t.wal.kind) == ("pending", 3, "file")
    assert t.streams == {p.stream_id: p.leader_epoch for p in lost}
    assert all(p.leader == 1 for p in lost)  # offline until the WAL is in S3
    with pytest.raises(KeyError):
        s.heartbeat(1, epochs[1])
    fenced_at = {p.stream_id: p.leader_epoch + 1 for p in lost}
    fenced_at[lost[0].stream_id] += 5  # an earlier, interrupted takeover had fenced this one further
    assert s.wal_taken_over(3, s.brokers[3].epoch, t.id, fenced_at) == len(lost)
    assert not s.takeovers
    for p in lost:
        assert p.leader in (0, 2, 3)
        assert p.leader_epoch >= fenced_at[p.stream_id]
    # The old broker returns: live and empty (rebalancing is another story).
    b, busy = s.register_broker(1, "az2", "h", 1, WalSpec("file", "/w", "broker-1"))
    assert not busy
    s.broker_ready(1, b.epoch)
    assert s.partitions_led()[1] == 0 and s.brokers[1].alive


def test_file_wal_without_a_same_zone_survivor_waits(metadata_spec: str) -> None:
    s = ControllerState(metadata_spec)
    for i in range(3):
        join(s, i, f"az{i + 1}", kind="file")
    s.create_topics([{"name": "t", "num_partitions": 6, "replication_factor": 1}], False, False)
    s.last_seen[2] = 0.0
    for b in (0, 1):
        s.heartbeat(b, s.brokers[b].epoch)
    s.expire(3.0)
    (t,) = s.takeovers.values()
    assert t.state == "waiting" and "az3" in t.reason
    # It comes back: the waiting takeover is dropped, it recovers its own WAL and leads again.
    b, busy = s.register_broker(2, "az3", "h", 1, WalSpec("file", "/w", "broker-2"))
    assert not busy and not s.takeovers
    s.broker_ready(2, b.epoch)
    assert s.partitions_led()[2] == 2


def test_controlled_shutdown_moves_partitions_unless_the_cluster_stops(metadata_spec: str) -> None:
    s = ControllerState(metadata_spec)
    for i in range(3):
        join(s, i, f"az{i + 1}")
    s.create_topics([{"name": "t", "num_partitions": 6, "replication_factor": 1}], False, False)
    before = {p.index: p.leader_epoch for p in s.topics["t"].partitions}
    assert s.controlled_shutdown(0, s.brokers[0].epoch) == 2
    assert s.partitions_led()[0] == 0 and s.brokers[0].state == "shutdown"
    moved = [p for p in s.topics["t"].partitions if p.leader_epoch != before[p.index]]
    assert len(moved) == 2 and all(p.leader in (1, 2) for p in moved)
    s.stopping = True
    assert s.controlled_shutdown(1, s.brokers[1].epoch) == 0
    assert s.partitions_led()[1] > 0


def test_a_closed_session_connection_fences_before_the_session_timeout(metadata_spec: str) -> None:
    s = ControllerState(metadata_spec)
    for i in range(2):
        join(s, i, f"az{i + 1}")
    s.connection_lost({0, 1})
    s.heartbeat(1, s.brokers[1].epoch)  # broker 1 reconnected and heartbeats: not lost
    s.lost_at[0] -= 2.0  # broker 0 has been silent for 2 s since its connection closed
    assert s.expire(session_timeout_s=30.0, lost_grace_s=1.5) == [0]
    assert s.brokers[0].state == "fenced" and s.brokers[1].alive


def test_a_controller_whose_lease_moved_writes_nothing(pg_url: str) -> None:
    """A leader paused past its lease: the standby takes it (a new epoch), and the old leader's
    next write is refused in the database, whatever its memory says."""
    from engine.controller.lease import Lease
    from engine.controller.store import NotLeader, PostgresControllerStore

    a, b = Lease(pg_url, "a", "127.0.0.1:1", ttl_s=0.3), Lease(pg_url, "b", "127.0.0.1:2", ttl_s=5)
    first = a.try_acquire()
    assert first is not None and b.try_acquire() is None
    old = ControllerState(PostgresControllerStore(pg_url, lease_epoch=first))
    join(old, 0, "az1")
    assert codes(old.create_topics([{"name": "before"}], validate_only=False, internal=False)) == [ErrorCode.NONE]
    wait = time.monotonic() + 5
    while (second := b.try_acquire()) is None:
        assert time.monotonic() < wait, "the lease never expired"
        time.sleep(0.05)
    assert second == first + 1 and b.current().address == "127.0.0.1:2"
    with pytest.raises(NotLeader):
        old.create_topics([{"name": "after"}], validate_only=False, internal=False)
    assert not a.renew(first)
    new = ControllerState(PostgresControllerStore(pg_url, lease_epoch=second), new_term=True)
    assert set(new.topics) == {"before"}
    # Brokers that saw anything the old leader showed but never committed take a snapshot.
    assert new.version > old.version and new.changes_since(old.version).get("snapshot") is not None
    for x in (old, new):
        x.close()
    a.close()
    b.close()
