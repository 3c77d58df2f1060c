"""The auto-balancer's planner: which partition leaders to move so that brokers carry even shares.

Pure functions over plain values: no I/O, no asyncio, nothing from the rest of engine. The
controller passes the brokers that may lead (running ones), every partition with its leader and
load, and the partitions still in their cooldown; it applies the moves of the returned Plan.

The objective, compared lexicographically (docs/cluster.md, "Balancer"):

    H  = partitions whose leader is not among `brokers` (homeless or on a broker being drained)
    Vc = sum over brokers of how far its partition count lies outside [lo, hi]
    Vt = sum over brokers of how far its throughput lies outside [t_lo, t_hi] (0 when the cluster is idle)

Every action the planner takes (a move, or a swap of two partitions between two brokers) lowers
(H, Vc, Vt). Loads are summed as integers, so the value a plan leaves is exactly the value the
next plan starts from: with the same loads, planning again after a complete plan finds nothing,
and since the objective only falls, no assignment ever comes back (no flapping).
"""

from __future__ import annotations

import heapq
import math
import time
from bisect import bisect_left, insort
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field

#: Loads are counted in 1/UNIT byte/s as integers: sums are exact, so a plan and the next plan
#: see the same totals (float sums drift with the order of additions).
UNIT = 64
#: How many of the least (most) loaded brokers a violator tries as its partner before giving up.
_PARTNERS = 16
#: How many of a donor's heaviest partitions a swap considers besides the one nearest the aim.
_HEAVY = 3


@dataclass(frozen=True, slots=True)
class BrokerInfo:
    id: int
    zone: str


@dataclass(frozen=True, slots=True)
class PartitionLoad:
    key: tuple[str, int]  # (topic, partition)
    leader: int  # current leader; a broker not in `brokers` means the partition must move
    bytes_in: float = 0.0  # bytes/s produced to it
    bytes_out: float = 0.0  # bytes/s fetched from it


@dataclass(frozen=True, slots=True)
class Move:
    key: tuple[str, int]
    source: int
    target: int


@dataclass(frozen=True, slots=True)
class Bounds:
    """What `balanced` means for one plan's input."""

    min_partitions: int
    max_partitions: int
    min_throughput: float  # bytes/s; 0 when throughput is not balanced
    max_throughput: float  # bytes/s; inf when throughput is not balanced
    throughput_balanced: bool  # False: the cluster is below `min_throughput`, counts only


@dataclass(frozen=True, slots=True)
class Spread:
    max_over_mean_throughput: float  # 1.0 when nothing flows
    min_partitions: int
    max_partitions: int
    per_broker: dict[int, tuple[int, float]]  # id -> (partitions led, bytes/s)
    min_over_mean_throughput: float = 1.0
    per_zone: dict[str, tuple[int, float]] = field(default_factory=dict)  # zone -> (partitions, bytes/s)
    #: Largest zone throughput / the zone's share of the total (its brokers / all brokers).
    max_zone_over_share: float = 1.0
    homeless: int = 0  # partitions led by no broker in `brokers`


@dataclass(frozen=True, slots=True)
class Plan:
    moves: list[Move]
    before: Spread
    after: Spread
    elapsed_s: float
    bounds: Bounds = field(default_factory=lambda: Bounds(0, 0, 0.0, math.inf, False))
    balanced: bool = False  # `after` is within `bounds`
    #: True: the planner stopped because no move improves the objective any more, so planning
    #: again with the same loads returns no moves. False: it stopped at `max_moves`.
    done: bool = True
    reason: str = ""

    @property
    def unreachable(self) -> bool:
        """Nothing more to do, yet not within bounds (a partition too big to place, frozen partitions)."""
        return self.done and not self.balanced


def plan(
    brokers: Sequence[BrokerInfo],
    partitions: Sequence[PartitionLoad],
    *,
    frozen: Collection[tuple[str, int]] = (),
    max_moves: int = 50,
    throughput_bound: float = 1.2,
    count_slack: int = 1,
    min_throughput: float = 1 << 20,
    throughput_floor: float | None = None,
) -> Plan:
    """Moves that bring every broker within bounds, homeless partitions first.

    Bounds: each broker leads between ceil(mean - count_slack) and floor(mean + count_slack)
    partitions (floor(mean)..ceil(mean) when count_slack is 0), and, when the cluster carries at
    least `min_throughput` bytes/s in all, between `throughput_floor` (default 2 - throughput_bound)
    and `throughput_bound` times the mean throughput. Ties between equal loads go to the partition
    earlier in `partitions`, between brokers to the lower id: the same input gives the same plan.
    """
    t0 = time.perf_counter()
    p = _Planner(brokers, partitions, frozen, max_moves, throughput_bound, count_slack, min_throughput,
                 throughput_floor)  # fmt: skip
    before = p.spread()
    p.run()
    after = p.spread()
    return Plan(
        moves=p.moves(),
        before=before,
        after=after,
        elapsed_s=time.perf_counter() - t0,
        bounds=p.bounds(),
        balanced=p.balanced(),
        done=not p.cut,
        reason=p.reason(),
    )


def apply(partitions: Sequence[PartitionLoad], moves: Sequence[Move]) -> list[PartitionLoad]:
    """The partitions as they are once `moves` are done (for tests, benchmarks and dry runs)."""
    target = {m.key: m.target for m in moves}
    return [PartitionLoad(q.key, target[q.key], q.bytes_in, q.bytes_out) if q.key in target else q for q in partitions]


class _Heaps:
    """Brokers by count and by throughput, over the cluster and per zone.

    Lazy: an update pushes fresh entries and bumps the broker's version, and entries with an
    old version are dropped when they surface, so every query is O(log B).
    """

    def __init__(self, zone: dict[int, str]) -> None:
        self.zone = zone
        self.ver = dict.fromkeys(zone, 0)
        self.limit = 8 * len(zone) + 64
        scopes: list[str | None] = [None, *sorted(set(zone.values()))]
        self.min_c: dict[str | None, list[tuple[int, int, int, int]]] = {s: [] for s in scopes}
        self.max_c: dict[str | None, list[tuple[int, int, int, int]]] = {s: [] for s in scopes}
        self.min_t: dict[str | None, list[tuple[int, int, int, int]]] = {s: [] for s in scopes}
        self.max_t: dict[str | None, list[tuple[int, int, int, int]]] = {s: [] for s in scopes}

    def push(self, b: int, c: int, t: int) -> None:
        v = self.ver[b] = self.ver[b] + 1
        push = heapq.heappush
        for scope in (None, self.zone[b]):
            push(self.min_c[scope], (c, t, b, v))
            push(self.max_c[scope], (-c, -t, b, v))
            push(self.min_t[scope], (t, c, b, v))
            push(self.max_t[scope], (-t, -c, b, v))
        if len(self.min_c[None]) > self.limit:
            self._compact()

    def _compact(self) -> None:
        ver = self.ver
        for family in (self.min_c, self.max_c, self.min_t, self.max_t):
            for heap in family.values():
                heap[:] = [e for e in heap if e[3] == ver[e[2]]]
                heapq.heapify(heap)

    def top(
        self,
        heap: list[tuple[int, int, int, int]],
        n: int = 1,
        skip: Callable[[int], bool] | None = None,
    ) -> list[int]:
        """The first `n` brokers of `heap` for which `skip` is false."""
        out: list[int] = []
        held = []
        ver = self.ver
        while heap and len(out) < n:
            e = heap[0]
            b = e[2]
            if e[3] != ver[b]:
                heapq.heappop(heap)
                continue
            if skip is None or not skip(b):
                out.append(b)
                if len(out) == n:
                    break
            held.append(heapq.heappop(heap))
        for e in held:
            heapq.heappush(heap, e)
        return out

    def first(self, heap: list[tuple[int, int, int, int]], skip: Callable[[int], bool] | None = None) -> int | None:
        top = self.top(heap, 1, skip)
        return top[0] if top else None


class _Planner:
    def __init__(
        self,
        brokers: Sequence[BrokerInfo],
        partitions: Sequence[PartitionLoad],
        frozen: Collection[tuple[str, int]],
        max_moves: int,
        throughput_bound: float,
        count_slack: int,
        min_throughput: float,
        throughput_floor: float | None,
    ) -> None:
        self.max_moves = max_moves
        self.ids = sorted({b.id for b in brokers})
        self.zone = {b.id: b.zone for b in sorted(brokers, key=lambda b: b.id)}
        self.keys = keys = [q.key for q in partitions]
        try:
            self.w = w = [int((q.bytes_in + q.bytes_out) * UNIT + 0.5) for q in partitions]
        except (ValueError, OverflowError):  # a NaN or infinite rate from a broker counts as no load
            self.w = w = [_units(q.bytes_in + q.bytes_out) for q in partitions]
        if w and min(w) < 0:
            w[:] = [max(x, 0) for x in w]
        self.leader = [q.leader for q in partitions]
        self.n = n = len(partitions)
        nb = len(self.ids)
        self.total = sum(w)
        c = self.c = dict.fromkeys(self.ids, 0)
        t = self.t = dict.fromkeys(self.ids, 0)
        #: Per broker, its movable partitions as w * n + i, sorted on first use: an int per entry
        #: sorts and bisects several times faster than a tuple.
        self.movable: dict[int, list[int]] = {b: [] for b in self.ids}
        self.sorted: set[int] = set()
        frozen_set = frozenset(frozen)
        by_leader: dict[int, list[int]] = {}
        for i, b in enumerate(self.leader):
            group = by_leader.get(b)
            if group is None:
                by_leader[b] = [i]
            else:
                group.append(i)
        self.homeless: list[int] = []
        for b, idx in by_leader.items():
            if b not in c:
                self.homeless.extend(idx)
                continue
            ws = [w[i] for i in idx]
            c[b] = len(idx)
            t[b] = sum(ws)
            if frozen_set:
                self.movable[b] = [x * n + i for x, i in zip(ws, idx, strict=True) if keys[i] not in frozen_set]
            else:
                self.movable[b] = [x * n + i for x, i in zip(ws, idx, strict=True)]
        self.homeless.sort()
        self.unplaced = len(self.homeless)
        # Bounds: counts within mean +- slack; throughput within [floor, bound] x mean, as integers.
        if nb:
            slack = max(count_slack, 0)
            self.lo = max(0, min(n // nb, -(-(n - slack * nb) // nb)))
            self.hi = max(-(-n // nb), (n + slack * nb) // nb)
            self.mean_c = n / nb
            self.mean_t = self.total / nb
        else:
            self.lo, self.hi, self.mean_c, self.mean_t = 0, 0, 0.0, 0.0
        self.active = nb > 0 and self.total >= min_throughput * UNIT
        floor_ratio = max(0.0, 2.0 - throughput_bound) if throughput_floor is None else throughput_floor
        if self.active:
            self.t_hi = int(throughput_bound * self.total / nb)
            self.t_lo = min(math.ceil(floor_ratio * self.total / nb), self.t_hi)
        else:
            self.t_hi, self.t_lo = 1 << 62, 0
        self.heaps = _Heaps(self.zone)
        for b in self.ids:
            self.heaps.push(b, c[b], t[b])
        #: Partition -> broker it led before this plan, for the partitions that now lead elsewhere.
        self.moved: dict[int, int] = {}
        self.cut = False  # an improving action did not fit in max_moves
        self.stuck_donors: set[int] = set()  # over their count, nothing movable
        self.stuck: set[int] = set()  # throughput violators no move or swap helps, until something moves

    # -- state ---------------------------------------------------------------------------------

    def _list(self, b: int) -> list[int]:
        lst = self.movable[b]
        if b not in self.sorted:
            lst.sort()
            self.sorted.add(b)
        return lst

    def _cost(self, i: int, dst: int) -> int:
        """How many more moves the plan holds once partition i goes to dst (moves of one partition collapse)."""
        if i not in self.moved:
            return 1
        return -1 if self.moved[i] == dst else 0

    def _affordable(self, cost: int) -> bool:
        if len(self.moved) + cost <= self.max_moves:
            return True
        # A swap never fits in max_moves=1: leaving it out is final, not a cut, or a plan would
        # promise a next plan that can never come.
        if not (self.max_moves == 1 and cost == 2):
            self.cut = True
        return False

    def _move(self, i: int, dst: int) -> None:
        src = self.leader[i]
        if src not in self.c:
            self.unplaced -= 1
        w = self.w[i]
        e = w * self.n + i
        c, t = self.c, self.t
        if src in c:
            lst = self._list(src)
            del lst[bisect_left(lst, e)]
            c[src] -= 1
            t[src] -= w
            self.heaps.push(src, c[src], t[src])
        if dst in self.sorted:
            insort(self.movable[dst], e)
        else:
            self.movable[dst].append(e)
        c[dst] += 1
        t[dst] += w
        self.heaps.push(dst, c[dst], t[dst])
        self.leader[i] = dst
        self.stuck_donors.discard(dst)
        if i not in self.moved:
            self.moved[i] = src
        elif self.moved[i] == dst:
            del self.moved[i]
        self.stuck.clear()

    def _vc(self, c: int) -> int:
        return max(0, c - self.hi) + max(0, self.lo - c)

    def _vt(self, t: int) -> int:
        return max(0, t - self.t_hi) + max(0, self.t_lo - t)

    # -- the search ----------------------------------------------------------------------------

    def run(self) -> None:
        if not self.ids:
            return
        if not self._place_homeless():
            return
        while not self.cut:
            if self._count_step():
                continue
            if self.active and self._throughput_step():
                continue
            break

    def _place_homeless(self) -> bool:
        """Heaviest first, each onto the broker with the least throughput (or fewest partitions
        when throughput is not balanced) among those below the count bound."""
        h = self.heaps
        c, hi = self.c, self.hi
        for i in sorted(self.homeless, key=lambda i: -self.w[i]):
            if not self._affordable(1):
                return False
            b = h.first(h.min_t[None], lambda b: c[b] >= hi) if self.active else h.first(h.min_c[None])
            if b is None:  # every broker at the bound: impossible while partitions are unplaced
                b = h.first(h.min_c[None])
            assert b is not None
            self._move(i, b)
        return True

    def _count_step(self) -> bool:
        """One move that lowers Vc: off a broker above `hi`, or onto one below `lo`."""
        h, c, lo, hi = self.heaps, self.c, self.lo, self.hi
        stuck = self.stuck_donors
        while True:
            s = h.first(h.max_c[None], stuck.__contains__)
            if s is not None and c[s] > hi:
                rz = h.first(h.min_c[self.zone[s]])
                rg = h.first(h.min_c[None])
                assert rz is not None and rg is not None
                # Same zone when that is as good: it fixes a broker below lo too, or nobody is below lo.
                r = rz if c[rz] < lo or (c[rg] >= lo and c[rz] < hi) else rg
                if c[r] >= hi:
                    return False
            else:
                r0 = h.first(h.min_c[None])
                if r0 is None or c[r0] >= lo:
                    return False
                r = r0
                sz = h.first(h.max_c[self.zone[r]], stuck.__contains__)
                sg = h.first(h.max_c[None], stuck.__contains__)
                if sg is None or c[sg] <= lo:
                    return False
                s = sz if sz is not None and (c[sz] > hi or (c[sg] <= hi and c[sz] > lo)) else sg
            i = self._pick_for_count(s)
            if i is None:
                stuck.add(s)
                continue
            if not self._affordable(self._cost(i, r)):
                return False
            self._move(i, r)
            return True

    def _pick_for_count(self, s: int) -> int | None:
        """The partition to move off s to fix counts: the light ones when s carries no more than its
        share of throughput; else the one nearest s's throughput excess per excess partition, so
        fixing counts also evens out throughput."""
        lst = self._list(s)
        if not lst:
            return None
        n = self.n
        if not self.active or self.t[s] <= self.mean_t:
            return lst[0] % n
        want = (self.t[s] - self.mean_t) / max(1.0, self.c[s] - self.mean_c)
        pos = _nearest(lst, n, 0, 1 << 62, want)
        assert pos is not None
        return lst[pos] % n

    def _throughput_step(self) -> bool:
        """One move or swap that lowers Vt without raising Vc: for the broker furthest outside the
        throughput bounds, with the least (most) loaded brokers, same zone first."""
        h, t, stuck = self.heaps, self.t, self.stuck
        while True:
            hot = h.first(h.max_t[None], stuck.__contains__)
            cold = h.first(h.min_t[None], stuck.__contains__)
            over = t[hot] - self.t_hi if hot is not None else 0
            under = self.t_lo - t[cold] if cold is not None else 0
            if over <= 0 and under <= 0:
                return False
            if over >= under:
                assert hot is not None
                fixed = hot
                zone_best = h.first(h.min_t[self.zone[hot]])
                partners = h.top(h.min_t[None], _PARTNERS)
                if zone_best is not None and t[zone_best] < self.mean_t:
                    partners.insert(0, zone_best)
                pairs = [(hot, r) for r in dict.fromkeys(partners) if r != hot]
            else:
                assert cold is not None
                fixed = cold
                zone_best = h.first(h.max_t[self.zone[cold]])
                partners = h.top(h.max_t[None], _PARTNERS)
                if zone_best is not None and t[zone_best] > self.mean_t:
                    partners.insert(0, zone_best)
                pairs = [(d, cold) for d in dict.fromkeys(partners) if d != cold]
            for donor, receiver in pairs:
                if self._transfer(donor, receiver):
                    return True
                if self.cut:
                    return False
            stuck.add(fixed)

    def _transfer(self, a: int, b: int) -> bool:
        """Move load from a to b, by a single move when counts allow, else by a swap with b's
        lightest partition. Neither broker is pushed outside the throughput bounds, so Vt falls by
        as much as moves (one of them is outside), and Vc does not rise."""
        t, c, n = self.t, self.c, self.n
        room = min(self.t_hi - t[b], t[a] - self.t_lo)
        if room <= 0:
            return False
        # Aim for the move that brings one of the two to the mean, and at least out of violation.
        want = max(min(t[a] - self.mean_t, self.mean_t - t[b]), t[a] - self.t_hi, self.t_lo - t[b])
        want = min(max(want, 1.0), float(room))
        la = self._list(a)
        if self._vc(c[a] - 1) - self._vc(c[a]) + self._vc(c[b] + 1) - self._vc(c[b]) <= 0:
            pos = _nearest(la, n, 1, room, want)
            if pos is not None:
                i = la[pos] % n
                if not self._affordable(self._cost(i, b)):
                    return False
                self._move(i, b)
                return True
        lb = self._list(b)
        if not lb:
            return False
        # Swaps: a partition of a for one of b, net x = w_p - w_q in [1, room], x nearest `want`.
        # With b's lightest partition, p has the widest choice; with a's heaviest, a partition too
        # big to move alone can still leave in exchange for a slightly smaller one.
        w = self.w
        found: list[tuple[float, int, int]] = []
        wq = lb[0] // n
        pos = _nearest(la, n, wq + 1, wq + room, wq + want)
        if pos is not None:
            found.append((abs(la[pos] // n - wq - want), la[pos] % n, lb[0] % n))
        for pos in range(len(la) - 1, max(len(la) - 1 - _HEAVY, -1), -1):
            wp = la[pos] // n
            qpos = _nearest(lb, n, max(0, wp - room), wp - 1, wp - want)
            if qpos is not None:
                found.append((abs(wp - lb[qpos] // n - want), la[pos] % n, lb[qpos] % n))
        if not found:
            return False
        _, i, q = min(found, key=lambda f: f[0])  # the first of equals: the lightest-q candidate
        assert w[i] > w[q]
        if not self._affordable(self._cost(i, b) + self._cost(q, a)):
            return False
        self._move(i, b)
        self._move(q, a)
        return True

    # -- results -------------------------------------------------------------------------------

    def moves(self) -> list[Move]:
        return [Move(self.keys[i], src, self.leader[i]) for i, src in self.moved.items()]

    def bounds(self) -> Bounds:
        if self.active:
            return Bounds(self.lo, self.hi, self.t_lo / UNIT, self.t_hi / UNIT, True)
        return Bounds(self.lo, self.hi, 0.0, math.inf, False)

    def violations(self) -> tuple[int, int, int]:
        home = self.unplaced
        vc = sum(self._vc(x) for x in self.c.values())
        vt = sum(self._vt(x) for x in self.t.values()) if self.active else 0
        return home, vc, vt

    def balanced(self) -> bool:
        return bool(self.ids) and self.violations() == (0, 0, 0)

    def reason(self) -> str:
        if not self.ids:
            return "no brokers to lead partitions" if self.n else "no brokers, no partitions"
        if self.balanced():
            return "within bounds"
        if self.cut:
            return f"stopped at max_moves={self.max_moves}; the next plan continues"
        if self.violations()[1]:
            return (
                f"partition counts stay outside [{self.lo}, {self.hi}]: the partitions that would have to move "
                "are frozen (cooldown)"
            )
        worst = max(self.ids, key=lambda b: (self._vt(self.t[b]), -b))
        where = f"broker {worst} at {self.t[worst] / self.mean_t:.2f}x the mean"
        big = max(range(self.n), key=lambda i: (self.w[i], -i))
        name, load = f"{self.keys[big][0]}-{self.keys[big][1]}", self.w[big] / UNIT
        band = (self.t_hi - self.mean_t) / UNIT
        if load > self.t_hi / UNIT:
            return (
                f"throughput bound unreachable: {where}; partition {name} alone carries {load:,.0f} B/s, more "
                f"than a broker may lead ({self.t_hi / UNIT:,.0f} B/s)"
            )
        if self.max_moves == 1:
            return f"throughput bound unreachable: {where}; max_moves=1 leaves out swaps, which take two moves"
        if load > band:
            return (
                f"throughput bound unreachable by moves and swaps: {where}; loads are coarse (partition {name} "
                f"carries {load:,.0f} B/s, more than the {band:,.0f} B/s a broker may lead above the mean)"
            )
        return (
            f"throughput bound unreachable by moves and swaps: {where}, and no move or swap improves it without "
            "pushing another broker out of bounds (frozen partitions?)"
        )

    def spread(self) -> Spread:
        c, t = self.c, self.t
        mean = self.mean_t
        per_broker = {b: (c[b], t[b] / UNIT) for b in self.ids}
        per_zone: dict[str, tuple[int, float]] = {}
        brokers_in: dict[str, int] = {}
        for b in self.ids:
            z = self.zone[b]
            zc, zt = per_zone.get(z, (0, 0.0))
            per_zone[z] = (zc + c[b], zt + t[b] / UNIT)
            brokers_in[z] = brokers_in.get(z, 0) + 1
        if not self.ids:
            return Spread(1.0, 0, 0, {}, 1.0, {}, 1.0, self.n)
        if mean > 0:
            hi_ratio = max(t.values()) / mean
            lo_ratio = min(t.values()) / mean
            zone_ratio = max(zt * UNIT / (mean * brokers_in[z]) for z, (_, zt) in per_zone.items())
        else:
            hi_ratio = lo_ratio = zone_ratio = 1.0
        homeless = self.unplaced
        return Spread(hi_ratio, min(c.values()), max(c.values()), per_broker, lo_ratio, per_zone, zone_ratio,
                      homeless)  # fmt: skip


def _units(rate: float) -> int:
    return int(rate * UNIT + 0.5) if math.isfinite(rate) else 0


def _nearest(lst: list[int], n: int, lo_w: int, hi_w: int, want: float) -> int | None:
    """Index in lst (sorted w * n + i) of the entry with lo_w <= w <= hi_w nearest to want, the
    lighter on a tie; None when no entry is in range."""
    a = bisect_left(lst, lo_w * n)
    b = bisect_left(lst, (hi_w + 1) * n) if hi_w < 1 << 62 else len(lst)
    if a >= b:
        return None
    k = bisect_left(lst, math.ceil(want) * n, a, b)
    if k == b:
        return b - 1
    if k == a:
        return a
    below, above = lst[k - 1] // n, lst[k] // n
    return k - 1 if want - below <= above - want else k
