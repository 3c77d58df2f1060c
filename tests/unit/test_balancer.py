"""The balancer's planner (engine/controller/balancer.py): bounds reached, convergence, no flapping."""

from __future__ import annotations

import math
import random

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.controller.balancer import UNIT, BrokerInfo, PartitionLoad, Plan, apply, plan

MIB = 1 << 20


def brokers_in(n: int, zones: int = 3, first: int = 0) -> list[BrokerInfo]:
    return [BrokerInfo(b, f"az{b % zones}") for b in range(first, first + n)]


def loads(n: int, leader: int | list[int], rng: random.Random, mean: float = 1 * MIB) -> list[PartitionLoad]:
    leaders = leader if isinstance(leader, list) else [leader] * n
    return [PartitionLoad(("t", i), leaders[i], rng.expovariate(1 / mean) * 0.3, rng.expovariate(1 / mean) * 0.7)
            for i in range(n)]  # fmt: skip


def potential(brokers: list[BrokerInfo], parts: list[PartitionLoad], bound: float = 1.2, slack: int = 1,
              min_throughput: float = MIB) -> tuple[int, int, int]:  # fmt: skip
    """(homeless, count violation, throughput violation) from the spec, computed apart from the planner."""
    ids = {b.id for b in brokers}
    nb, n = len(ids), len(parts)
    w = [int((q.bytes_in + q.bytes_out) * UNIT + 0.5) for q in parts]
    total = sum(w)
    c = dict.fromkeys(ids, 0)
    t = dict.fromkeys(ids, 0)
    for q, x in zip(parts, w, strict=True):
        if q.leader in ids:
            c[q.leader] += 1
            t[q.leader] += x
    lo = max(0, min(n // nb, math.ceil(n / nb - slack)))
    hi = max(math.ceil(n / nb), math.floor(n / nb + slack))
    vc = sum(max(0, x - hi) + max(0, lo - x) for x in c.values())
    vt = 0
    if total >= min_throughput * UNIT:
        t_hi = int(bound * total / nb)
        t_lo = math.ceil((2 - bound) * total / nb)
        vt = sum(max(0, x - t_hi) + max(0, t_lo - x) for x in t.values())
    return n - sum(c.values()), vc, vt


def within(brokers: list[BrokerInfo], parts: list[PartitionLoad], bound: float = 1.2, slack: int = 1) -> bool:
    return potential(brokers, parts, bound, slack) == (0, 0, 0)


def converge(
    brokers: list[BrokerInfo], parts: list[PartitionLoad], max_rounds: int, max_moves: int = 50
) -> tuple[list[PartitionLoad], list[Plan]]:
    """Plan and apply until a plan is empty, checking what every plan promises on the way."""
    plans: list[Plan] = []
    seen = {tuple(q.leader for q in parts)}
    phi = potential(brokers, parts)
    for _ in range(max_rounds):
        p = plan(brokers, parts, max_moves=max_moves)
        plans.append(p)
        if not p.moves:
            assert p.done
            return parts, plans
        assert len(p.moves) <= max_moves
        assert len({m.key for m in p.moves}) == len(p.moves), "one move per partition per plan"
        by_key = {q.key: q.leader for q in parts}
        assert all(by_key[m.key] == m.source and m.source != m.target for m in p.moves)
        parts = apply(parts, p.moves)
        now = potential(brokers, parts)
        assert now < phi, f"a plan must lower the objective: {phi} -> {now}"
        phi = now
        state = tuple(q.leader for q in parts)
        assert state not in seen, "an assignment came back"
        seen.add(state)
        if p.done:  # complete: planning again with the same loads must find nothing
            again = plan(brokers, parts, max_moves=max_moves)
            assert again.moves == [], again.moves
    raise AssertionError(f"no empty plan after {max_rounds} rounds")


def test_all_on_one_of_three_brokers_balances_in_four_rounds_then_stays() -> None:
    rng = random.Random(7)
    brokers = brokers_in(3)
    parts = loads(300, 0, rng)
    final, plans = converge(brokers, parts, 20, max_moves=50)
    # 200 partitions must leave broker 0: at least 4 plans of 50.
    assert [len(p.moves) for p in plans][:3] == [50, 50, 50]
    assert len(plans) - 1 <= 5, [len(p.moves) for p in plans]
    last = plans[-1]
    assert last.balanced and last.done and not last.unreachable
    assert within(brokers, final)
    assert last.after.min_partitions >= 99 and last.after.max_partitions <= 101
    assert last.after.max_over_mean_throughput <= 1.2 and last.after.min_over_mean_throughput >= 0.8
    assert plans[0].before.max_partitions == 300 and plans[0].before.min_partitions == 0
    assert plans[0].before.max_over_mean_throughput > 2.9
    # The first plan fixes counts with partitions that also even out throughput: broker 0 sheds
    # throughput as fast as partitions (about a sixth of each).
    first = plans[0].after.per_broker
    assert first[0][0] == 250 and 0.7 < first[0][1] / plans[0].before.per_broker[0][1] < 0.95


@st.composite
def clusters(draw: st.DrawFn) -> tuple[list[BrokerInfo], list[PartitionLoad], int, int]:
    nb = draw(st.integers(1, 20))
    nz = draw(st.integers(1, 3))
    brokers = [BrokerInfo(b * 3 + 1, f"z{draw(st.integers(0, nz - 1))}") for b in range(nb)]
    n = draw(st.integers(0, 500))
    seed = draw(st.integers(0, 2**32))
    rng = random.Random(seed)
    shape = draw(st.sampled_from(["uniform", "zipf", "one-hot", "idle", "zeros"]))
    # Leaders: some brokers get everything (as after restarts), a few partitions are homeless.
    crowded = rng.sample(brokers, k=rng.randint(1, nb))
    homeless = draw(st.floats(0, 0.3))
    total = draw(st.sampled_from([0.5, 20.0, 500.0])) * MIB
    exponent = draw(st.floats(0.3, 1.5))

    def weight(k: int) -> float:
        if shape == "uniform":
            return rng.uniform(0.5, 1.5)
        if shape == "zipf":
            return float((k + 1) ** -exponent)
        if shape == "one-hot":
            return 1000.0 if k == 0 else rng.uniform(0, 1)
        if shape == "idle":
            return rng.uniform(0, 1) * 1e-6
        return 0.0

    ws = [weight(k) for k in range(n)]
    rng.shuffle(ws)
    scale = total / sum(ws) if sum(ws) > 0 else 0.0
    parts = []
    for i, x in enumerate(ws):
        leader = -5 if rng.random() < homeless else rng.choice(crowded).id
        parts.append(PartitionLoad((f"t{i % 7}", i), leader, x * scale * 0.4, x * scale * 0.6))
    max_moves = draw(st.integers(5, 60))  # max_moves=1: test_swaps_need_two_moves
    return brokers, parts, max_moves, seed


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(clusters())
def test_repeated_plans_converge_and_stop(case: tuple[list[BrokerInfo], list[PartitionLoad], int, int]) -> None:
    brokers, parts, max_moves, _ = case
    n = len(parts)
    # A bound on rounds: every partition moves a few times at most, and each full plan moves max_moves.
    rounds = 4 * n // max_moves + 4
    final, plans = converge(brokers, parts, rounds, max_moves=max_moves)
    last = plans[-1]
    assert not last.moves and last.done
    assert potential(brokers, final)[0] == 0, "homeless partitions are always placed"
    assert potential(brokers, final)[1] == 0, "counts are always reachable when nothing is frozen"
    assert last.balanced == within(brokers, final)
    total = sum(q.bytes_in + q.bytes_out for q in parts)
    biggest = max((q.bytes_in + q.bytes_out for q in parts), default=0.0)
    # Reachable for sure: nothing frozen, and no partition larger than the band around the mean.
    if total < MIB or biggest * len(brokers) <= 0.2 * total - len(brokers) / UNIT:
        assert last.balanced, (last.reason, last.after)
    if not last.balanced:
        assert last.unreachable and "unreachable" in last.reason


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(clusters(), st.floats(0, 1), st.integers(0, 2**32))
def test_frozen_partitions_never_move_and_a_complete_plan_stays_complete(
    case: tuple[list[BrokerInfo], list[PartitionLoad], int, int], share: float, seed: int
) -> None:
    brokers, parts, max_moves, _ = case
    rng = random.Random(seed)
    frozen = {q.key for q in parts if rng.random() < share}
    ids = {b.id for b in brokers}
    homeless = {q.key for q in parts if q.leader not in ids}
    p = plan(brokers, parts, frozen=frozen, max_moves=max_moves)
    assert not {m.key for m in p.moves} & (frozen - homeless)
    after = apply(parts, p.moves)
    if p.moves:
        assert potential(brokers, after) < potential(brokers, parts)
    if p.done:
        assert plan(brokers, after, frozen=frozen, max_moves=max_moves).moves == []


def test_with_a_cooldown_nothing_moves_back_and_it_still_balances() -> None:
    """The controller freezes what the last plan moved: successive plans never undo each other."""
    rng = random.Random(11)
    brokers = brokers_in(3)
    parts = loads(300, [0] * 280 + [1] * 20, rng)
    last: dict[tuple[str, int], tuple[int, int]] = {}
    for _ in range(30):
        p = plan(brokers, parts, frozen=last.keys(), max_moves=50)
        if not p.moves and p.balanced:
            break
        assert not any(last.get(m.key) == (m.target, m.source) for m in p.moves)
        last = {m.key: (m.source, m.target) for m in p.moves}
        parts = apply(parts, p.moves)
    else:
        raise AssertionError("not balanced after 30 plans")
    assert within(brokers, parts)


def test_frozen_partitions_stay_unless_homeless() -> None:
    rng = random.Random(3)
    brokers = brokers_in(3)
    parts = [*loads(90, 0, rng), PartitionLoad(("gone", 0), 9, 5 * MIB, 0)]
    frozen = {("t", i) for i in range(0, 90, 2)} | {("gone", 0)}
    p = plan(brokers, parts, frozen=frozen, max_moves=1000)
    moved = {m.key for m in p.moves}
    assert ("gone", 0) in moved, "a frozen partition on a broker that left still moves"
    assert not moved & (frozen - {("gone", 0)})
    assert len(moved) >= 40
    # Half of broker 0's partitions are frozen: 45 of 91 must stay, above the count bound of 31.
    assert p.unreachable and "frozen" in p.reason
    assert p.after.per_broker[0][0] == 45


def test_homeless_and_draining_partitions_move_first() -> None:
    rng = random.Random(4)
    brokers = brokers_in(3)
    parts = loads(60, [0] * 50 + [1] * 10, rng)
    parts += [PartitionLoad(("orphan", i), 7, 1000.0 * i, 0) for i in range(8)]
    few = plan(brokers, parts, max_moves=5)
    assert all(m.source == 7 for m in few.moves) and len(few.moves) == 5
    assert not few.done and few.after.homeless == 3
    # Heaviest first: the 5 heaviest orphans go in the first plan.
    assert {m.key[1] for m in few.moves} == {3, 4, 5, 6, 7}
    many = plan(brokers, parts, max_moves=100)
    sources = [m.source for m in many.moves]
    assert sources[:8] == [7] * 8 and 7 not in sources[8:]
    assert many.after.homeless == 0 and many.balanced


def test_idle_cluster_is_balanced_by_counts_only() -> None:
    rng = random.Random(5)
    brokers = brokers_in(3)
    # 0.9 MiB/s in all, all of it on broker 0's partitions: below min_throughput, so only counts count.
    parts = [PartitionLoad(("t", i), i % 3, 0.0, 0.0) for i in range(30)]
    parts = [PartitionLoad(q.key, q.leader, 30_000.0 * rng.random() if q.leader == 0 else 0.0, 0.0) for q in parts]
    idle = plan(brokers, parts)
    assert idle.moves == [] and idle.balanced and not idle.bounds.throughput_balanced
    assert idle.before.max_over_mean_throughput > 2.5
    # The same loads times 100 are above min_throughput: now throughput is balanced too.
    busy_parts = [PartitionLoad(q.key, q.leader, q.bytes_in * 100, 0.0) for q in parts]
    busy = plan(brokers, busy_parts, max_moves=100)
    assert busy.moves and busy.bounds.throughput_balanced and busy.balanced
    # Counts off balance on an idle cluster: moves fix counts (10 +- 1), taking the lightest partitions.
    skewed = [PartitionLoad(("t", i), 0, float(i), 0.0) for i in range(30)]
    p = plan(brokers, skewed, max_moves=100)
    assert p.balanced and (p.after.min_partitions, p.after.max_partitions) == (9, 11)
    assert sorted(m.key[1] for m in p.moves) == list(range(19))


def test_scale_in_drains_the_removed_broker() -> None:
    rng = random.Random(6)
    brokers = brokers_in(4)
    parts, _ = converge(brokers, loads(200, 0, rng, mean=2 * MIB), 50, max_moves=50)
    assert within(brokers, parts)
    remaining = [b for b in brokers if b.id != 3]
    final, plans = converge(remaining, parts, 50, max_moves=50)
    assert all(q.leader != 3 for q in final)
    drained = [m for m in plans[0].moves if m.source == 3]
    assert plans[0].moves[: len(drained)] == drained and len(drained) == 50
    assert within(remaining, final)


def test_scale_out_gives_the_new_broker_its_share() -> None:
    rng = random.Random(8)
    brokers = brokers_in(3)
    parts, _ = converge(brokers, loads(300, 0, rng, mean=2 * MIB), 50, max_moves=50)
    grown = [*brokers, BrokerInfo(3, "az0")]
    final, plans = converge(grown, parts, 50, max_moves=50)
    assert all(m.target == 3 for p in plans for m in p.moves), "only the new broker needs anything"
    last = plans[-1].after
    count, load = last.per_broker[3]
    assert 74 <= count <= 76
    assert load >= 0.8 * sum(t for _, t in last.per_broker.values()) / 4
    assert within(grown, final)


def test_one_huge_partition_terminates_and_says_why() -> None:
    brokers = brokers_in(3)
    parts = [PartitionLoad(("big", 0), 0, 100 * MIB, 0)]
    parts += [PartitionLoad(("small", i), i % 3, 0.1 * MIB, 0) for i in range(30)]
    final, plans = converge(brokers, parts, 10, max_moves=50)
    last = plans[-1]
    assert last.unreachable and not last.balanced
    assert "big-0" in last.reason and "unreachable" in last.reason
    # It still evens out what it can: counts within bounds.
    assert potential(brokers, final)[1] == 0


def test_prefers_moves_within_a_zone() -> None:
    brokers = [BrokerInfo(0, "a"), BrokerInfo(1, "a"), BrokerInfo(2, "b"), BrokerInfo(3, "b")]
    parts = [PartitionLoad(("t", i), 0, MIB, 0) for i in range(20)]
    parts += [PartitionLoad(("u", i), 2 + i % 2, MIB, 0) for i in range(20)]
    p = plan(brokers, parts, max_moves=100)
    assert p.balanced and p.moves
    assert {(m.source, m.target) for m in p.moves} == {(0, 1)}
    assert p.after.max_zone_over_share == 1.0


def test_zone_short_of_its_share_gets_it_from_other_zones() -> None:
    brokers = [BrokerInfo(0, "a"), BrokerInfo(1, "a"), BrokerInfo(2, "b"), BrokerInfo(3, "c")]
    parts = [PartitionLoad(("t", i), i % 2, MIB, 0) for i in range(40)]
    p = plan(brokers, parts, max_moves=100)
    assert p.balanced
    assert p.before.per_zone["b"] == (0, 0.0) and p.before.max_zone_over_share == 2.0
    # 10 +- 1 partitions a broker: each of zones b and c, one broker each, takes 9 from zone a.
    assert p.after.per_zone == {"a": (22, 22.0 * MIB), "b": (9, 9.0 * MIB), "c": (9, 9.0 * MIB)}
    assert all(m.source in (0, 1) and m.target in (2, 3) for m in p.moves) and len(p.moves) == 18


def test_same_input_same_plan_whatever_the_broker_order() -> None:
    rng = random.Random(9)
    brokers = brokers_in(7)
    parts = loads(400, [rng.choice([0, 1, 2]) for _ in range(400)], rng)
    a = plan(brokers, parts, max_moves=60)
    b = plan(list(reversed(brokers)), parts, max_moves=60)
    assert a.moves == b.moves and len(a.moves) == 60


def test_swaps_need_two_moves() -> None:
    brokers = brokers_in(2)
    parts = [PartitionLoad(("t", i), i // 2, (3 if i < 2 else 1) * MIB, 0) for i in range(4)]
    # No count slack: 2 partitions each, so only a swap evens out 6 MiB/s against 2.
    one = plan(brokers, parts, count_slack=0, max_moves=1)
    assert one.moves == [] and one.done and one.unreachable and "max_moves=1" in one.reason
    two = plan(brokers, parts, count_slack=0, max_moves=2)
    assert sorted((m.source, m.target) for m in two.moves) == [(0, 1), (1, 0)] and two.balanced
    assert two.after.per_broker == {0: (2, 4.0 * MIB), 1: (2, 4.0 * MIB)}


def test_count_bounds() -> None:
    def bounds(n: int, nb: int, slack: int) -> tuple[int, int]:
        p = plan(brokers_in(nb), [PartitionLoad(("t", i), 0) for i in range(n)], count_slack=slack, max_moves=0)
        return p.bounds.min_partitions, p.bounds.max_partitions

    assert bounds(300, 3, 1) == (99, 101)  # mean 100: 100 +- 1
    assert bounds(301, 3, 1) == (100, 101)  # mean 100.33: every count within mean +- 1
    assert bounds(302, 3, 1) == (100, 101)
    assert bounds(301, 3, 0) == (100, 101)  # no slack: floor(mean)..ceil(mean)
    assert bounds(300, 3, 0) == (100, 100)
    assert bounds(2, 3, 1) == (0, 1)
    assert bounds(7, 2, 2) == (2, 5)


def test_max_moves_zero_reports_not_done() -> None:
    p = plan(brokers_in(2), [PartitionLoad(("t", i), 0) for i in range(10)], max_moves=0)
    assert p.moves == [] and not p.done and not p.balanced and "max_moves" in p.reason


def test_bad_rates_count_as_no_load() -> None:
    parts = [PartitionLoad(("t", 0), 0, math.nan, 0), PartitionLoad(("t", 1), 0, math.inf, 0)]
    parts += [PartitionLoad(("t", 2), 1, -5.0, 0), PartitionLoad(("t", 3), 1, 0, 0)]
    p = plan(brokers_in(2), parts)
    assert p.moves == [] and p.balanced and p.before.per_broker == {0: (2, 0.0), 1: (2, 0.0)}


def test_no_brokers() -> None:
    p = plan([], [PartitionLoad(("t", 0), 1)])
    assert p.moves == [] and not p.balanced and p.after.homeless == 1 and "no brokers" in p.reason
