"""The classic group protocol state machine, driven without sockets and with a hand-moved clock."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from engine.broker.groups import GroupConfig, GroupCoordinator, GroupState, ManualTimers, OffsetCommitEntry
from engine.broker.groups.group import JoinResult, SyncResult
from engine.broker.groups.testing import MemoryStreams
from engine.broker.ports import CoordinatorHost
from engine.protocol import ErrorCode

T = TypeVar("T")


def run(fn: Callable[..., Coroutine[Any, Any, T]]) -> Callable[..., T]:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> T:
        return asyncio.run(fn(*args, **kwargs))

    return wrapper


# Session timeout above the rebalance timeout, so a test of one does not trip the other.
SESSION = 30_000
REBALANCE = 20_000
RANGE = [("range", b"range-meta")]


class Harness:
    def __init__(self, streams: MemoryStreams | None = None, timers: ManualTimers | None = None, **cfg: Any) -> None:
        self.timers = timers or ManualTimers()
        self.streams = streams or MemoryStreams()
        self.local = True
        self.c = GroupCoordinator(
            config=GroupConfig(offsets_topic_partitions=4, **cfg),
            timers=self.timers,
            open_stream=self.streams,
            is_local=lambda _key: self.local,
        )

    async def start(self) -> Harness:
        await self.c.start()
        await self.c.wait_loaded()
        return self

    def join(
        self,
        member_id: str = "",
        group: str = "g",
        instance: str | None = None,
        protocols: list[tuple[str, bytes]] | None = None,
        session: int = SESSION,
        rebalance: int = REBALANCE,
        require_known: bool = False,
        ptype: str = "consumer",
        client: str = "client",
    ) -> asyncio.Task[JoinResult]:
        return asyncio.ensure_future(
            self.c.join_group(
                group_id=group,
                member_id=member_id,
                group_instance_id=instance,
                client_id=client,
                client_host="/127.0.0.1",
                session_timeout_ms=session,
                rebalance_timeout_ms=rebalance,
                protocol_type=ptype,
                protocols=RANGE if protocols is None else protocols,
                require_known_member_id=require_known,
            )
        )

    def sync(
        self,
        member_id: str,
        generation: int,
        group: str = "g",
        assignments: dict[str, bytes] | None = None,
        instance: str | None = None,
    ) -> asyncio.Task[SyncResult]:
        return asyncio.ensure_future(
            self.c.sync_group(
                group_id=group,
                generation_id=generation,
                member_id=member_id,
                group_instance_id=instance,
                protocol_type="consumer",
                protocol_name=None,
                assignments=assignments or {},
            )
        )

    async def heartbeat(self, member_id: str, generation: int, group: str = "g", instance: str | None = None) -> int:
        return await self.c.heartbeat(
            group_id=group, generation_id=generation, member_id=member_id, group_instance_id=instance
        )

    async def commit(
        self,
        group: str = "g",
        generation: int = -1,
        member_id: str = "",
        offsets: dict[tuple[str, int], int] | None = None,
        instance: str | None = None,
        metadata: str = "",
    ) -> list[ErrorCode]:
        entries = [OffsetCommitEntry(t, p, o, 3, metadata) for (t, p), o in (offsets or {("t", 0): 5}).items()]
        return await self.c.commit_offsets(
            group_id=group, generation_id=generation, member_id=member_id, group_instance_id=instance, offsets=entries
        )

    def state(self, group: str = "g") -> GroupState:
        g = self.c.group(group)
        return GroupState.DEAD if g is None else g.state

    def advance(self, ms: int) -> None:
        self.timers.advance(ms)


async def settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0)


async def sync_all(h: Harness, gen: int, results: list[JoinResult], group: str = "g") -> dict[str, bytes]:
    leader = next(r for r in results if r.member_id == r.leader_id)
    assignments = {m.member_id: m.member_id.encode() for m in leader.members}
    tasks = [h.sync(r.member_id, gen, group, assignments if r is leader else None) for r in results]
    out = await asyncio.gather(*tasks)
    for r, s in zip(results, out, strict=True):
        assert s.error == ErrorCode.NONE, s
        assert s.assignment == r.member_id.encode()
    return {r.member_id: s.assignment for r, s in zip(results, out, strict=True)}


async def form_group(h: Harness, n: int, group: str = "g", **kw: Any) -> tuple[list[str], int]:
    """n dynamic members, added one by one (each addition a full rebalance), ending Stable."""
    ids: list[str] = []
    gen = 0
    for i in range(n):
        new = h.join(group=group, client=f"c{i}", **kw)
        await settle()
        rejoins = [h.join(member_id=m, group=group, **kw) for m in ids]
        results = [await t for t in [new, *rejoins]]
        assert all(r.error == ErrorCode.NONE for r in results), results
        gen = results[0].generation_id
        ids = [*(r.member_id for r in results[1:]), results[0].member_id]  # oldest first; ids[0] leads
        assert results[0].leader_id == ids[0]
        await sync_all(h, gen, results, group)
    assert h.state(group) is GroupState.STABLE
    return ids, gen


# -- JoinGroup ----------------------------------------------------------------------------------


@run
async def test_member_id_required_then_join_as_leader() -> None:
    h = await Harness().start()
    first = await h.join(require_known=True)
    assert first.error == ErrorCode.MEMBER_ID_REQUIRED
    assert first.member_id.startswith("client-")
    second = await h.join(member_id=first.member_id, require_known=True)
    assert second.error == ErrorCode.NONE
    assert second.member_id == first.member_id == second.leader_id
    assert second.generation_id == 1
    assert second.protocol_name == "range" and second.protocol_type == "consumer"
    assert [(m.member_id, m.metadata) for m in second.members] == [(first.member_id, b"range-meta")]
    assert h.state() is GroupState.COMPLETING_REBALANCE


@run
async def test_pending_member_that_never_rejoins_expires() -> None:
    h = await Harness().start()
    ids, gen = await form_group(h, 1)
    pending = await h.join(require_known=True)
    assert pending.error == ErrorCode.MEMBER_ID_REQUIRED
    # The pending member alone does not start a rebalance ...
    assert h.state() is GroupState.STABLE
    # ... but a rebalance waits for it until its session timeout.
    rejoin = h.join(member_id=ids[0])
    await settle()
    assert not rejoin.done()
    h.advance(SESSION)
    await settle()
    r = await rejoin
    assert r.error == ErrorCode.NONE and r.generation_id == gen + 1 and len(r.members) == 1


@run
async def test_single_member_sync_and_stable() -> None:
    h = await Harness().start()
    j = await h.join()
    s = await h.sync(j.member_id, j.generation_id, assignments={j.member_id: b"a1"})
    assert s.error == ErrorCode.NONE and s.assignment == b"a1"
    assert s.protocol_name == "range" and s.protocol_type == "consumer"
    assert h.state() is GroupState.STABLE
    assert await h.heartbeat(j.member_id, j.generation_id) == ErrorCode.NONE


@run
async def test_second_member_triggers_rebalance_and_everyone_gets_its_assignment() -> None:
    h = await Harness().start()
    (a,), gen = await form_group(h, 1)
    b_join = h.join(client="b")
    await settle()
    assert not b_join.done()
    assert h.state() is GroupState.PREPARING_REBALANCE
    assert await h.heartbeat(a, gen) == ErrorCode.REBALANCE_IN_PROGRESS
    a_join = h.join(member_id=a)
    ra, rb = await a_join, await b_join
    assert ra.generation_id == rb.generation_id == gen + 1
    assert ra.leader_id == rb.leader_id == a
    assert {m.member_id for m in ra.members} == {a, rb.member_id}
    assert rb.members == []
    # The follower's sync parks until the leader's assignment is durable.
    follower = h.sync(rb.member_id, rb.generation_id)
    await settle()
    assert not follower.done()
    leader = h.sync(a, ra.generation_id, assignments={a: b"A", rb.member_id: b"B"})
    assert (await leader).assignment == b"A"
    assert (await follower).assignment == b"B"
    assert h.state() is GroupState.STABLE


@run
async def test_form_group_of_three() -> None:
    h = await Harness().start()
    ids, gen = await form_group(h, 3)
    assert len(set(ids)) == 3 and gen == 3
    for m in ids:
        assert await h.heartbeat(m, gen) == ErrorCode.NONE


@run
async def test_protocol_chosen_by_votes_among_common_protocols() -> None:
    h = await Harness().start()
    both = [("roundrobin", b"rr"), ("range", b"rg")]
    a = h.join(protocols=both)
    ra = await a
    await sync_all(h, ra.generation_id, [ra])
    b = h.join(protocols=[("range", b"rg2"), ("sticky", b"s")])
    c = h.join(protocols=[("range", b"rg3"), ("roundrobin", b"rr3")])
    await settle()
    ra2 = await h.join(member_id=ra.member_id, protocols=both)
    rb, rc = await b, await c
    # "range" is the only protocol all three support.
    assert ra2.protocol_name == rb.protocol_name == rc.protocol_name == "range"
    metas = {m.member_id: m.metadata for m in ra2.members}
    assert metas == {ra.member_id: b"rg", rb.member_id: b"rg2", rc.member_id: b"rg3"}


@run
async def test_inconsistent_protocols_rejected() -> None:
    h = await Harness().start()
    await form_group(h, 1)
    r = await h.join(protocols=[("roundrobin", b"")])
    assert r.error == ErrorCode.INCONSISTENT_GROUP_PROTOCOL
    r = await h.join(ptype="connect")
    assert r.error == ErrorCode.INCONSISTENT_GROUP_PROTOCOL
    r = await h.join(group="other", protocols=[])
    assert r.error == ErrorCode.INCONSISTENT_GROUP_PROTOCOL
    assert h.c.group("other") is None


@run
async def test_join_validation_errors() -> None:
    h = await Harness().start()
    assert (await h.join(group="")).error == ErrorCode.INVALID_GROUP_ID
    assert (await h.join(session=10)).error == ErrorCode.INVALID_SESSION_TIMEOUT
    assert (await h.join(member_id="nobody")).error == ErrorCode.UNKNOWN_MEMBER_ID
    await form_group(h, 1)
    assert (await h.join(member_id="nobody")).error == ErrorCode.UNKNOWN_MEMBER_ID


@run
async def test_follower_rejoin_in_stable_group_gets_current_generation() -> None:
    h = await Harness().start()
    (_a, b), gen = await form_group(h, 2)
    r = await h.join(member_id=b)
    assert r.error == ErrorCode.NONE and r.generation_id == gen and r.members == []
    assert h.state() is GroupState.STABLE


@run
async def test_leader_rejoin_in_stable_group_triggers_rebalance() -> None:
    h = await Harness().start()
    (a, b), gen = await form_group(h, 2)
    ja = h.join(member_id=a)
    await settle()
    assert h.state() is GroupState.PREPARING_REBALANCE
    jb = h.join(member_id=b)
    assert (await ja).generation_id == (await jb).generation_id == gen + 1


@run
async def test_changed_metadata_triggers_rebalance() -> None:
    h = await Harness().start()
    (a, b), gen = await form_group(h, 2)
    jb = h.join(member_id=b, protocols=[("range", b"new-subscription")])
    await settle()
    assert h.state() is GroupState.PREPARING_REBALANCE
    ja = h.join(member_id=a)
    ra = await ja
    assert {m.member_id: m.metadata for m in ra.members}[b] == b"new-subscription"
    assert (await jb).generation_id == gen + 1


@run
async def test_retried_join_while_completing_rebalance_gets_same_answer() -> None:
    h = await Harness().start()
    (a, b), _gen = await form_group(h, 2)
    ra, _rb = await asyncio.gather(h.join(member_id=a), h.join(member_id=b))
    assert h.state() is GroupState.COMPLETING_REBALANCE
    again = await h.join(member_id=a)
    assert again.generation_id == ra.generation_id and {m.member_id for m in again.members} == {a, b}
    assert h.state() is GroupState.COMPLETING_REBALANCE


@run
async def test_rebalance_timeout_drops_members_that_did_not_rejoin() -> None:
    h = await Harness().start()
    (a, b), gen = await form_group(h, 2)
    jc = h.join(client="c")
    ja = h.join(member_id=a)
    await settle()
    assert not ja.done()
    h.advance(REBALANCE - 1)
    await settle()
    assert not ja.done()
    h.advance(1)
    ra, rc = await ja, await jc
    assert ra.error == rc.error == ErrorCode.NONE
    assert {m.member_id for m in ra.members} == {a, rc.member_id}
    assert b not in h.c.group("g").members  # type: ignore[union-attr]
    assert await h.heartbeat(b, gen) == ErrorCode.UNKNOWN_MEMBER_ID


@run
async def test_session_timeout_removes_silent_member_and_rebalances() -> None:
    h = await Harness().start()
    (a, b), gen = await form_group(h, 2)
    for _ in range(3):
        h.advance(SESSION // 3 - 1)
        assert await h.heartbeat(a, gen) == ErrorCode.NONE
    assert b in h.c.group("g").members  # type: ignore[union-attr]
    h.advance(3)
    # b has been silent for its session timeout.
    assert b not in h.c.group("g").members  # type: ignore[union-attr]
    assert h.state() is GroupState.PREPARING_REBALANCE
    assert await h.heartbeat(a, gen) == ErrorCode.REBALANCE_IN_PROGRESS
    r = await h.join(member_id=a)
    assert r.generation_id == gen + 1 and [m.member_id for m in r.members] == [a]


@run
async def test_member_parked_in_join_is_not_expired_by_session_timeout() -> None:
    h = await Harness().start()
    (a, b), gen = await form_group(h, 2)
    ja = h.join(member_id=a, session=5_000, rebalance=REBALANCE)
    await settle()
    for _ in range(3):  # a is parked in the join phase (it cannot heartbeat), b heartbeats
        h.advance(5_000)
        assert await h.heartbeat(b, gen) == ErrorCode.REBALANCE_IN_PROGRESS
    assert a in h.c.group("g").members  # type: ignore[union-attr]
    assert not ja.done()
    h.advance(REBALANCE)  # b never rejoined
    r = await ja
    assert r.error == ErrorCode.NONE and [m.member_id for m in r.members] == [a]


@run
async def test_new_member_never_completing_join_expires() -> None:
    h = await Harness(new_member_join_timeout_ms=5_000).start()
    (_a,), _gen = await form_group(h, 1)
    jb = h.join(client="b", rebalance=600_000)
    await settle()
    h.advance(5_000)
    rb = await jb
    assert rb.error == ErrorCode.UNKNOWN_MEMBER_ID


@run
async def test_pending_sync_timeout_removes_members_that_never_sync() -> None:
    h = await Harness().start()
    (a, b), _gen = await form_group(h, 2)
    ra, _rb = await asyncio.gather(h.join(member_id=a), h.join(member_id=b))
    s = await h.sync(a, ra.generation_id, assignments={a: b"A", b: b"B"})
    assert s.error == ErrorCode.NONE
    assert h.state() is GroupState.STABLE
    h.advance(REBALANCE - 1)
    assert b in h.c.group("g").members  # type: ignore[union-attr]
    h.advance(1)  # b never sent SyncGroup
    assert b not in h.c.group("g").members  # type: ignore[union-attr]
    assert h.state() is GroupState.PREPARING_REBALANCE


@run
async def test_sync_validation() -> None:
    h = await Harness().start()
    (a, _b), gen = await form_group(h, 2)
    assert (await h.sync("x", gen)).error == ErrorCode.UNKNOWN_MEMBER_ID
    assert (await h.sync(a, gen + 5)).error == ErrorCode.ILLEGAL_GENERATION
    assert (await h.sync(a, gen, group="nope")).error == ErrorCode.UNKNOWN_MEMBER_ID
    s = await h.c.sync_group(
        group_id="g", generation_id=gen, member_id=a, group_instance_id=None, protocol_type="consumer",
        protocol_name="roundrobin", assignments={},
    )  # fmt: skip
    assert s.error == ErrorCode.INCONSISTENT_GROUP_PROTOCOL
    jc = h.join(client="c")
    await settle()
    assert (await h.sync(a, gen)).error == ErrorCode.REBALANCE_IN_PROGRESS
    jc.cancel()


@run
async def test_rebalance_during_completing_answers_parked_sync_with_rebalance_in_progress() -> None:
    h = await Harness().start()
    (a, b), _gen = await form_group(h, 2)
    _ra, rb = await asyncio.gather(h.join(member_id=a), h.join(member_id=b))
    sb = h.sync(b, rb.generation_id)
    await settle()
    jc = h.join(client="c")  # a new member arrives before the leader synced
    assert (await sb).error == ErrorCode.REBALANCE_IN_PROGRESS
    jc.cancel()


# -- LeaveGroup ---------------------------------------------------------------------------------


@run
async def test_leave_group_rebalances_and_reports_unknown_members() -> None:
    h = await Harness().start()
    (a, b, c), gen = await form_group(h, 3)
    top, errs = await h.c.leave_group(group_id="g", members=[(b, None), ("ghost", None)])
    assert top == ErrorCode.NONE and errs == [ErrorCode.NONE, ErrorCode.UNKNOWN_MEMBER_ID]
    assert h.state() is GroupState.PREPARING_REBALANCE
    ra, _rc = await asyncio.gather(h.join(member_id=a), h.join(member_id=c))
    assert ra.generation_id == gen + 1 and {m.member_id for m in ra.members} == {a, c}
    top, errs = await h.c.leave_group(group_id="missing", members=[(a, None)])
    assert top == ErrorCode.NONE and errs == [ErrorCode.UNKNOWN_MEMBER_ID]


@run
async def test_last_member_leaving_empties_group_and_stores_it() -> None:
    h = await Harness().start()
    (a,), gen = await form_group(h, 1)
    await h.c.leave_group(group_id="g", members=[(a, None)])
    assert h.state() is GroupState.EMPTY
    assert h.c.group("g").generation_id == gen + 1  # type: ignore[union-attr]


@run
async def test_leave_while_parked_in_join_answers_the_join() -> None:
    h = await Harness().start()
    (a, b), _gen = await form_group(h, 2)
    ja = h.join(member_id=a)
    await settle()
    await h.c.leave_group(group_id="g", members=[(a, None)])
    assert (await ja).error == ErrorCode.UNKNOWN_MEMBER_ID
    rb = await h.join(member_id=b)
    assert [m.member_id for m in rb.members] == [b]


# -- static membership --------------------------------------------------------------------------


async def form_static_group(h: Harness, instances: list[str]) -> tuple[dict[str, str], int]:
    ids: dict[str, str] = {}
    gen = 0
    for inst in instances:
        new = h.join(instance=inst, client=inst)
        await settle()
        rejoins = [h.join(member_id=m, instance=i) for i, m in ids.items()]
        results = [await t for t in [new, *rejoins]]
        ids = {inst: results[0].member_id, **{i: r.member_id for i, r in zip(ids, results[1:], strict=True)}}
        gen = results[0].generation_id
        leader = next(r for r in results if r.member_id == r.leader_id)
        assignments = {m.member_id: m.member_id.encode() for m in leader.members}
        inst_of = {m: i for i, m in ids.items()}
        await asyncio.gather(
            *[h.sync(r.member_id, gen, assignments=assignments if r is leader else None, instance=inst_of[r.member_id])
              for r in results]
        )  # fmt: skip
    assert h.state() is GroupState.STABLE
    return ids, gen


@run
async def test_static_member_restart_rejoins_without_rebalance() -> None:
    h = await Harness().start()
    ids, gen = await form_static_group(h, ["i1", "i2"])
    old = ids["i2"]
    g = h.c.group("g")
    assert g is not None
    leader_before = g.leader_id
    # "Restart": the same instance id, no member id.
    r = await h.join(instance="i2", client="i2")
    assert r.error == ErrorCode.NONE
    assert r.member_id != old and r.member_id.startswith("i2-")
    assert r.generation_id == gen
    assert r.leader_id == leader_before and r.members == []
    assert h.state() is GroupState.STABLE
    s = await h.sync(r.member_id, gen, instance="i2")
    assert s.error == ErrorCode.NONE and s.assignment == old.encode()  # the assignment carried over
    assert await h.heartbeat(old, gen, instance="i2") == ErrorCode.FENCED_INSTANCE_ID
    assert await h.heartbeat(r.member_id, gen, instance="i2") == ErrorCode.NONE
    assert await h.heartbeat(ids["i1"], gen, instance="i1") == ErrorCode.NONE


@run
async def test_static_leader_restart_is_not_told_it_leads() -> None:
    h = await Harness().start()
    ids, _gen = await form_static_group(h, ["i1", "i2"])
    g = h.c.group("g")
    assert g is not None
    leader_inst = next(i for i, m in ids.items() if m == g.leader_id)
    r = await h.join(instance=leader_inst)
    assert r.error == ErrorCode.NONE and r.leader_id == ids[leader_inst] != r.member_id
    assert g.leader_id == r.member_id  # it still leads the next rebalance
    assert h.state() is GroupState.STABLE


@run
async def test_static_member_restart_with_other_protocol_rebalances() -> None:
    h = await Harness().start()
    _ids, gen = await form_static_group(h, ["i1"])
    r = await h.join(instance="i1", protocols=[("roundrobin", b"x"), ("range", b"y")])
    # It now prefers another protocol, so the group's protocol changes: a new generation.
    assert r.generation_id == gen + 1 and r.protocol_name == "roundrobin"
    r = await h.join(instance="i1", protocols=[("sticky", b"x")])
    assert r.error == ErrorCode.INCONSISTENT_GROUP_PROTOCOL  # its old protocols still count


@run
async def test_static_member_fenced_while_parked() -> None:
    h = await Harness().start()
    ids, gen = await form_static_group(h, ["i1", "i2"])
    jold = h.join(member_id=ids["i1"], instance="i1")  # the leader rejoins: rebalance starts
    await settle()
    jnew = h.join(instance="i1")  # a new incarnation with the same instance id
    rold = await jold
    assert rold.error == ErrorCode.FENCED_INSTANCE_ID
    j2 = h.join(member_id=ids["i2"], instance="i2")
    rnew, r2 = await jnew, await j2
    assert rnew.error == ErrorCode.NONE and rnew.generation_id == gen + 1
    assert {m.group_instance_id for m in (rnew.members or r2.members)} == {"i1", "i2"}


@run
async def test_static_member_survives_rebalance_timeout_without_rejoining() -> None:
    h = await Harness().start()
    ids, _gen = await form_static_group(h, ["i1", "i2"])
    j3 = h.join(client="dyn")
    j1 = h.join(member_id=ids["i1"], instance="i1")
    await settle()
    h.advance(REBALANCE)
    r1, r3 = await j1, await j3
    assert r1.error == r3.error == ErrorCode.NONE
    g = h.c.group("g")
    assert g is not None and ids["i2"] in g.members  # static: kept, though it did not rejoin
    assert {m.group_instance_id for m in (r1.members or r3.members)} == {"i1", "i2", None}


@run
async def test_static_member_wrong_member_id_is_fenced() -> None:
    h = await Harness().start()
    ids, gen = await form_static_group(h, ["i1"])
    assert (await h.join(member_id="i1-stale", instance="i1")).error == ErrorCode.FENCED_INSTANCE_ID
    assert (await h.sync("i1-stale", gen, instance="i1")).error == ErrorCode.FENCED_INSTANCE_ID
    assert await h.heartbeat(ids["i1"], gen, instance="i9") == ErrorCode.UNKNOWN_MEMBER_ID
    _top, errs = await h.c.leave_group(group_id="g", members=[("i1-stale", "i1")])
    assert errs == [ErrorCode.FENCED_INSTANCE_ID]
    codes = await h.commit(generation=gen, member_id="i1-stale", instance="i1")
    assert codes == [ErrorCode.FENCED_INSTANCE_ID]


@run
async def test_static_member_leaves_by_instance_id() -> None:
    h = await Harness().start()
    _ids, _gen = await form_static_group(h, ["i1", "i2"])
    _top, errs = await h.c.leave_group(group_id="g", members=[("", "i2"), ("", "i9")])
    assert errs == [ErrorCode.NONE, ErrorCode.UNKNOWN_MEMBER_ID]
    assert h.state() is GroupState.PREPARING_REBALANCE


@run
async def test_static_member_session_timeout_still_applies() -> None:
    h = await Harness().start()
    ids, gen = await form_static_group(h, ["i1", "i2"])
    for _ in range(4):
        h.advance(SESSION // 3)
        await h.heartbeat(ids["i1"], gen, instance="i1")
    g = h.c.group("g")
    assert g is not None and ids["i2"] not in g.members and "i2" not in g.static_members


# -- offsets ------------------------------------------------------------------------------------


@run
async def test_simple_commit_and_fetch_without_group_membership() -> None:
    h = await Harness().start()
    codes = await h.commit(group="simple", offsets={("t", 0): 10, ("t", 1): 20, ("u", 0): 1})
    assert codes == [ErrorCode.NONE] * 3
    err, rows = await h.c.fetch_offsets(group_id="simple", partitions=None)
    assert err == ErrorCode.NONE
    assert [(t, p, co.offset if co else None) for t, p, co in rows] == [("t", 0, 10), ("t", 1, 20), ("u", 0, 1)]
    err, rows = await h.c.fetch_offsets(group_id="simple", partitions=[("t", 1), ("t", 9)])
    assert [(t, p, co.offset if co else None) for t, p, co in rows] == [("t", 1, 20), ("t", 9, None)]
    err, rows = await h.c.fetch_offsets(group_id="nobody", partitions=None)
    assert err == ErrorCode.NONE and rows == []
    assert h.state("simple") is GroupState.EMPTY


@run
async def test_commit_validation_against_generation_and_members() -> None:
    h = await Harness().start()
    assert await h.commit(group="fresh", generation=3, member_id="m") == [ErrorCode.ILLEGAL_GENERATION]
    (a, b), gen = await form_group(h, 2)
    assert await h.commit(generation=gen, member_id=a) == [ErrorCode.NONE]
    assert await h.commit(generation=gen - 1, member_id=a) == [ErrorCode.ILLEGAL_GENERATION]
    assert await h.commit(generation=gen, member_id="ghost") == [ErrorCode.UNKNOWN_MEMBER_ID]
    # A group with members takes no "simple" commits.
    assert await h.commit(generation=-1, member_id="") == [ErrorCode.UNKNOWN_MEMBER_ID]
    # During PreparingRebalance commits of the current generation are still accepted.
    jc = h.join(client="c")
    await settle()
    assert await h.commit(generation=gen, member_id=a) == [ErrorCode.NONE]
    ra, _rb, _ = await asyncio.gather(h.join(member_id=a), h.join(member_id=b), jc)
    assert h.state() is GroupState.COMPLETING_REBALANCE
    assert await h.commit(generation=ra.generation_id, member_id=a) == [ErrorCode.REBALANCE_IN_PROGRESS]


@run
async def test_commit_metadata_too_large_is_per_partition() -> None:
    h = await Harness(offset_metadata_max_bytes=10).start()
    codes = await h.c.commit_offsets(
        group_id="g", generation_id=-1, member_id="", group_instance_id=None,
        offsets=[OffsetCommitEntry("t", 0, 1, -1, "x" * 11), OffsetCommitEntry("t", 1, 2, -1, "ok")],
    )  # fmt: skip
    assert codes == [ErrorCode.OFFSET_METADATA_TOO_LARGE, ErrorCode.NONE]
    _, rows = await h.c.fetch_offsets(group_id="g", partitions=[("t", 0), ("t", 1)])
    assert rows[0][2] is None and rows[1][2] is not None and rows[1][2].metadata == "ok"


@run
async def test_commit_is_acknowledged_only_once_durable() -> None:
    h = await Harness().start()
    p = h.c.partition_for("g")
    stream = h.streams.open[("__consumer_offsets", p)]
    stream.hold = True
    task = asyncio.ensure_future(h.commit(offsets={("t", 0): 42}))
    await settle()
    assert not task.done()
    _, rows = await h.c.fetch_offsets(group_id="g", partitions=[("t", 0)])
    assert rows[0][2] is None  # not visible before it is durable
    stream.release()
    assert await task == [ErrorCode.NONE]
    _, rows = await h.c.fetch_offsets(group_id="g", partitions=[("t", 0)])
    assert rows[0][2] is not None and rows[0][2].offset == 42 and rows[0][2].leader_epoch == 3


@run
async def test_commit_cancelled_by_client_still_applies_once_durable() -> None:
    h = await Harness().start()
    stream = h.streams.open[("__consumer_offsets", h.c.partition_for("g"))]
    stream.hold = True
    task = asyncio.ensure_future(h.commit(offsets={("t", 0): 7}))
    await settle()
    task.cancel()
    stream.release()
    await settle()
    _, rows = await h.c.fetch_offsets(group_id="g", partitions=[("t", 0)])
    assert rows[0][2] is not None and rows[0][2].offset == 7


@run
async def test_failed_append_answers_error_then_partition_reloads() -> None:
    from engine.storage.errors import StorageError

    h = await Harness().start()
    assert await h.commit(offsets={("t", 0): 1}) == [ErrorCode.NONE]
    p = h.c.partition_for("g")
    h.streams.open[("__consumer_offsets", p)].fail_next = StorageError("disk on fire")
    assert await h.commit(offsets={("t", 0): 2}) == [ErrorCode.COORDINATOR_NOT_AVAILABLE]
    assert p not in h.c.loaded_partitions()
    # The next request reopens the stream and replays what is durable.
    _, rows = await h.c.fetch_offsets(group_id="g", partitions=[("t", 0)])
    assert rows[0][2] is not None and rows[0][2].offset == 1
    assert await h.commit(offsets={("t", 0): 3}) == [ErrorCode.NONE]


@run
async def test_fenced_stream_means_not_coordinator() -> None:
    h = await Harness().start()
    (a,), gen = await form_group(h, 1)
    p = h.c.partition_for("g")
    h.streams.logs[("__consumer_offsets", p)].epoch += 1  # someone else opened the partition
    assert await h.commit(generation=gen, member_id=a) == [ErrorCode.NOT_COORDINATOR]


@run
async def test_closed_stream_unloads_the_partition_and_answers_not_coordinator() -> None:
    from engine.storage.errors import StreamClosed

    h = await Harness().start()
    (a,), gen = await form_group(h, 1)
    assert await h.commit(generation=gen, member_id=a, offsets={("t", 0): 1}) == [ErrorCode.NONE]
    p = h.c.partition_for("g")
    # A second member makes the group rebalance; the follower's sync parks behind the leader's.
    b_join = h.join(client="b")
    await settle()
    ra, rb = await h.join(member_id=a), await b_join
    follower = h.sync(rb.member_id, rb.generation_id)
    await settle()
    # The broker closed the stream (the partition moved away): storing the assignment fails.
    h.streams.open[("__consumer_offsets", p)].fail_next = StreamClosed("stream 7 is closed")
    leader = h.sync(a, ra.generation_id, assignments={a: b"A", rb.member_id: b"B"})
    assert (await leader).error == ErrorCode.NOT_COORDINATOR
    assert (await follower).error == ErrorCode.NOT_COORDINATOR
    assert p not in h.c.loaded_partitions()
    # An offset commit on a closed stream says the same (retriable: the client finds the coordinator).
    opens = h.streams.opens
    _, rows = await h.c.fetch_offsets(group_id="g", partitions=[("t", 0)])
    assert h.streams.opens == opens + 1 and rows[0][2] is not None and rows[0][2].offset == 1
    h.streams.open[("__consumer_offsets", p)].fail_next = StreamClosed("stream 7 is closed")
    assert await h.commit(generation=gen, member_id=a, offsets={("t", 0): 2}) == [ErrorCode.NOT_COORDINATOR]
    assert p not in h.c.loaded_partitions()
    # The next request replays the partition from a new stream; the last durable generation is back.
    assert await h.heartbeat(a, gen) == ErrorCode.NONE
    assert await h.commit(generation=gen, member_id=a, offsets={("t", 0): 3}) == [ErrorCode.NONE]


@run
async def test_partition_moved_unloads_and_the_next_request_reloads_at_the_new_epoch() -> None:
    h = await Harness().start()
    (a, b), gen = await form_group(h, 2)
    assert await h.commit(generation=gen, member_id=a, offsets={("t", 0): 4}) == [ErrorCode.NONE]
    p = h.c.partition_for("g")
    old = h.streams.open[("__consumer_offsets", p)]
    parked = h.join(member_id=a)  # the leader rejoins: a rebalance that waits for b
    await settle()
    assert not parked.done()
    others = [i for i in h.c.loaded_partitions() if i != p]
    h.c.partition_moved(p)
    assert (await parked).error == ErrorCode.NOT_COORDINATOR
    assert p not in h.c.loaded_partitions() and sorted(h.c.loaded_partitions()) == others
    # The partition moved away and came back: its old stream is closed for good.
    from engine.storage.errors import StreamClosed

    old.fail_next = StreamClosed("closed when the partition moved away")
    h.c.partition_moved(p)  # not loaded: nothing to do
    h.c.partition_moved(99)  # not a partition of this coordinator: ignored
    # The next request loads from a new stream (at a new epoch) and sees the last durable state.
    assert await h.heartbeat(b, gen) == ErrorCode.NONE
    new = h.streams.open[("__consumer_offsets", p)]
    assert new is not old and new.epoch > old.epoch
    assert h.state() is GroupState.STABLE
    assert await h.commit(generation=gen, member_id=a, offsets={("t", 0): 5}) == [ErrorCode.NONE]
    _, rows = await h.c.fetch_offsets(group_id="g", partitions=[("t", 0)])
    assert rows[0][2] is not None and rows[0][2].offset == 5


@run
async def test_partition_moved_while_loading_abandons_the_load() -> None:
    streams = MemoryStreams()
    gate = asyncio.Event()

    async def slow_open(topic: str, partition: int) -> Any:
        await gate.wait()
        return await streams(topic, partition)

    h = Harness()
    h.c = GroupCoordinator(
        config=GroupConfig(offsets_topic_partitions=4), timers=h.timers, open_stream=slow_open, is_local=lambda _k: True
    )
    await h.c.start()  # starts loading every partition, all stuck opening
    p = h.c.partition_for("g")
    waiting = asyncio.ensure_future(h.c.fetch_offsets(group_id="g", partitions=None))
    await settle()
    h.c.partition_moved(p)
    assert await waiting == (ErrorCode.NOT_COORDINATOR, [])
    gate.set()
    await h.c.wait_loaded()
    assert p not in h.c.loaded_partitions() and len(h.c.loaded_partitions()) == 3
    assert await h.c.fetch_offsets(group_id="g", partitions=None) == (ErrorCode.NONE, [])
    assert p in h.c.loaded_partitions()
    await h.c.stop()


@run
async def test_not_coordinator_when_another_broker_owns_the_group() -> None:
    h = await Harness().start()
    await h.commit(offsets={("t", 0): 1})
    h.local = False
    assert (await h.join()).error == ErrorCode.NOT_COORDINATOR
    assert await h.commit() == [ErrorCode.NOT_COORDINATOR]
    assert h.c.loaded_partitions() == [] or h.c.partition_for("g") not in h.c.loaded_partitions()
    h.local = True
    _, rows = await h.c.fetch_offsets(group_id="g", partitions=[("t", 0)])
    assert rows[0][2] is not None and rows[0][2].offset == 1


# -- ListGroups, DescribeGroups, DeleteGroups ---------------------------------------------------


@run
async def test_list_and_describe_groups() -> None:
    h = await Harness().start()
    (a, b), _gen = await form_group(h, 2, group="busy")
    await h.commit(group="idle")
    err, groups = await h.c.list_groups()
    assert err == ErrorCode.NONE
    assert [(g.group_id, g.protocol_type, g.state) for g in groups] == [
        ("busy", "consumer", "Stable"),
        ("idle", "", "Empty"),
    ]
    _, only = await h.c.list_groups({"stable"})
    assert [g.group_id for g in only] == ["busy"]
    err, s = await h.c.describe_group("busy")
    assert (s.state, s.protocol_type, s.protocol) == ("Stable", "consumer", "range")
    assert {m.member_id: m.assignment for m in s.members} == {a: a.encode(), b: b.encode()}
    assert all(m.metadata == b"range-meta" and m.client_host == "/127.0.0.1" for m in s.members)
    err, s = await h.c.describe_group("nope")
    assert err == ErrorCode.NONE and s.state == "Dead" and s.members == []
    h.join(group="busy", client="c")
    await settle()
    _, s = await h.c.describe_group("busy")
    assert s.state == "PreparingRebalance" and s.protocol == "" and all(m.metadata == b"" for m in s.members)


@run
async def test_delete_groups() -> None:
    h = await Harness().start()
    await form_group(h, 1, group="busy")
    await h.commit(group="idle", offsets={("t", 0): 1, ("t", 1): 2})
    codes = await h.c.delete_groups(["busy", "idle", "missing"])
    assert codes == [ErrorCode.NON_EMPTY_GROUP, ErrorCode.NONE, ErrorCode.GROUP_ID_NOT_FOUND]
    _, rows = await h.c.fetch_offsets(group_id="idle", partitions=None)
    assert rows == []
    # The tombstones are durable: a restarted coordinator does not resurrect the group.
    h2 = await Harness(streams=h.streams, timers=h.timers).start()
    assert h2.c.group("idle") is None
    assert h2.c.group("busy") is not None


# -- persistence --------------------------------------------------------------------------------


@run
async def test_restart_restores_offsets_and_stable_group() -> None:
    h = await Harness().start()
    (a, b), gen = await form_group(h, 2)
    assert await h.commit(generation=gen, member_id=a, offsets={("t", 0): 11, ("t", 1): 12}) == [ErrorCode.NONE] * 2
    assert await h.commit(group="simple", offsets={("x", 3): 99}) == [ErrorCode.NONE]
    assert await h.commit(group="simple", offsets={("x", 3): 100}) == [ErrorCode.NONE]
    await h.c.stop()

    h2 = await Harness(streams=h.streams, timers=h.timers).start()
    g = h2.c.group("g")
    assert g is not None and g.state is GroupState.STABLE and g.generation_id == gen
    assert set(g.members) == {a, b} and g.protocol_name == "range"
    assert {m: g.members[m].assignment for m in g.members} == {a: a.encode(), b: b.encode()}
    # Members carry on with their generation: no rebalance.
    assert await h2.heartbeat(a, gen) == ErrorCode.NONE
    assert (await h2.sync(b, gen)).assignment == b.encode()
    _, rows = await h2.c.fetch_offsets(group_id="g", partitions=None)
    assert [(t, p, co.offset if co else None) for t, p, co in rows] == [("t", 0, 11), ("t", 1, 12)]
    _, rows = await h2.c.fetch_offsets(group_id="simple", partitions=None)
    assert [(t, p, co.offset if co else None) for t, p, co in rows] == [("x", 3, 100)]
    # A member that does not come back is expired by its session timeout.
    for _ in range(4):
        h2.advance(SESSION // 3)
        await h2.heartbeat(a, gen)
    assert set(g.members) == {a}


@run
async def test_restart_restores_empty_group_generation_and_static_members() -> None:
    h = await Harness().start()
    ids, gen = await form_static_group(h, ["i1", "i2"])
    h2 = await Harness(streams=h.streams, timers=h.timers).start()
    g = h2.c.group("g")
    assert g is not None and g.static_members == ids
    # The restarted static member rejoins without a rebalance on the new coordinator too.
    r = await h2.join(instance="i1")
    assert r.error == ErrorCode.NONE and r.generation_id == gen
    assert h2.state() is GroupState.STABLE

    h3 = Harness(timers=h.timers)
    await h3.start()
    (a,), gen3 = await form_group(h3, 1)
    await h3.c.leave_group(group_id="g", members=[(a, None)])
    h4 = await Harness(streams=h3.streams, timers=h.timers).start()
    assert h4.state() is GroupState.EMPTY and h4.c.group("g").generation_id == gen3 + 1  # type: ignore[union-attr]


@run
async def test_offset_retention_expires_offsets_of_empty_groups() -> None:
    h = await Harness(offsets_retention_ms=60_000, offsets_retention_check_interval_ms=10_000).start()
    await h.commit(group="simple", offsets={("t", 0): 1})
    (a,), gen = await form_group(h, 1, group="managed", session=100_000)
    await h.commit(group="managed", generation=gen, member_id=a)
    h.advance(30_000)
    await h.commit(group="simple", offsets={("t", 1): 1})
    await h.c.leave_group(group_id="managed", members=[(a, None)])
    h.advance(40_000)  # simple t-0 is 70 s old; managed became Empty 40 s ago
    await settle()
    _, rows = await h.c.fetch_offsets(group_id="simple", partitions=None)
    assert [(t, p) for t, p, _ in rows] == [("t", 1)]
    assert h.state("managed") is GroupState.EMPTY
    h.advance(30_000)
    await settle()
    assert h.c.group("managed") is None and h.c.group("simple") is None
    h2 = await Harness(streams=h.streams, timers=h.timers).start()
    assert h2.c.group("managed") is None and h2.c.group("simple") is None


@run
async def test_stop_answers_parked_requests() -> None:
    h = await Harness().start()
    (a, _b), gen = await form_group(h, 2)
    ja = h.join(member_id=a)
    await settle()
    await h.c.stop()
    assert (await ja).error == ErrorCode.NOT_COORDINATOR
    assert await h.heartbeat(a, gen) == ErrorCode.COORDINATOR_NOT_AVAILABLE


# -- wiring to a broker ---------------------------------------------------------------------------


class _BrokerConfig:
    offsets_topic_num_partitions = 5


class _Broker:
    """A CoordinatorHost (engine/broker/ports.py): what GroupCoordinator(broker) uses of the Broker."""

    node_id = 1
    config = _BrokerConfig()

    def __init__(self) -> None:
        self.streams = MemoryStreams()
        self.topic_exists = False
        self.leader = 1

    def topic(self, name: str) -> object | None:
        assert name == "__consumer_offsets"
        return object() if self.topic_exists else None

    async def open_internal_stream(self, topic: str, partition: int) -> Any:
        self.topic_exists = True  # the broker creates the topic on first use
        return await self.streams(topic, partition)

    def offsets_partition_for(self, key: str) -> int:
        from engine.broker.broker import java_string_hashcode

        return abs(java_string_hashcode(key)) % self.config.offsets_topic_num_partitions

    def coordinator_for(self, key: str) -> tuple[int, str, int]:
        return self.leader, "h", 1


@run
async def test_coordinator_takes_settings_and_placement_from_the_broker() -> None:
    b = _Broker()
    assert isinstance(b, CoordinatorHost)
    c = GroupCoordinator(b, timers=ManualTimers())
    assert c.config.offsets_topic_partitions == 5
    await c.start()
    await c.wait_loaded()
    # Neither start nor ListGroups creates __consumer_offsets; the first group request does.
    assert (await c.list_groups()) == (ErrorCode.NONE, [])
    assert b.streams.opens == 0
    codes = await c.commit_offsets(
        group_id="grp", generation_id=-1, member_id="", group_instance_id=None, offsets=[OffsetCommitEntry("t", 0, 1)]
    )
    assert codes == [ErrorCode.NONE] and b.streams.opens == 1
    assert list(b.streams.logs) == [("__consumer_offsets", b.offsets_partition_for("grp"))]
    await c.stop()
    # A restarted coordinator loads every partition it leads, now that the topic exists.
    c2 = GroupCoordinator(b, timers=ManualTimers())
    await c2.start()
    await c2.wait_loaded()
    assert sorted(c2.loaded_partitions()) == [0, 1, 2, 3, 4]
    assert c2.group("grp") is not None
    # Leadership moves away: the next request unloads the partition and says NOT_COORDINATOR.
    b.leader = 2
    err, rows = await c2.fetch_offsets(group_id="grp", partitions=None)
    assert err == ErrorCode.NOT_COORDINATOR and rows == []
    assert b.offsets_partition_for("grp") not in c2.loaded_partitions()
    await c2.stop()
