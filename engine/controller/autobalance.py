"""The controller's use of the balancer (engine/controller/balancer.py): what it plans from,
when it runs, and what it may not touch.

Inputs are the controller's own state: the running brokers (minus those being drained for
scale-in) and every partition with the load its leader last reported. A partition that
moved recently is frozen for `cooldown_s`, so the balancer never undoes its own work or a
user's reassignment, and never moves more than `max_moves` partitions per round. A round
is skipped while anything else changes the cluster (a broker starting, a WAL takeover, a
move under way), so plans are made from a settled picture.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from engine.controller import api
from engine.controller.balancer import BrokerInfo, PartitionLoad, Plan, plan
from engine.controller.state import ControllerState


@dataclass
class BalancerSettings:
    enabled: bool = True
    interval_s: float = 5.0
    #: A partition that moved is left where it is for this long.
    cooldown_s: float = 60.0
    max_moves: int = 32
    #: Below this much traffic in the whole cluster, only partition counts are balanced.
    min_throughput: float = float(1 << 20)


@dataclass
class AutoBalancer:
    state: ControllerState
    settings: BalancerSettings = field(default_factory=BalancerSettings)
    #: Brokers being drained (scale in): they get nothing, and what they lead moves away.
    draining: set[int] = field(default_factory=set)
    #: Recent decisions, for `amq cluster status` and the logs.
    decisions: list[str] = field(default_factory=list)
    #: Brokers that took part in the last round, and when: the next round waits for their load
    #: reports from after it, so it plans from where the partitions are now.
    _awaiting: dict[int, float] = field(default_factory=dict)

    def settled(self) -> str | None:
        """Why the cluster is not settled enough to plan for (None: it is)."""
        s = self.state
        if s.stopping:
            return "the cluster is stopping"
        if any(b.state == "starting" for b in s.brokers.values()):
            return "a broker is starting"
        if s.takeovers:
            return "a WAL takeover is under way"
        if s.moves_in_progress():
            return "moves are under way"
        alive = {b.id for b in s.alive_brokers()}
        self._awaiting = {b: t for b, t in self._awaiting.items() if b in alive and s.report_at.get(b, 0.0) < t}
        if self._awaiting:
            return "waiting for load reports from after the last round"
        return None

    def plan(self, exclude: set[int] | None = None, max_moves: int | None = None, cooldown: bool = True) -> Plan:
        s = self.state
        gone = self.draining | (exclude or set())
        brokers = [BrokerInfo(b.id, b.zone) for b in s.alive_brokers() if b.id not in gone]
        loads = s.loads
        # Equal loads are taken in list order: interleaving the topics (each in proportion to its
        # partition count) makes moves made for counts spread every topic, not empty one broker
        # of one topic while another topic stays where it was.
        ordered = sorted(
            ((p.index / len(t.partitions), t.name, p) for t in s.topics.values() for p in t.partitions),
            key=lambda x: (x[0], x[1]),
        )
        parts = []
        for _, name, p in ordered:
            r = loads.get((name, p.index))
            parts.append(PartitionLoad((name, p.index), p.leader, r.bytes_in if r else 0.0, r.bytes_out if r else 0.0))
        frozen: set[tuple[str, int]] = set()
        if cooldown:
            horizon = time.monotonic() - self.settings.cooldown_s
            frozen = {k for k, at in s.last_moved.items() if at > horizon}
        return plan(
            brokers, parts, frozen=frozen, max_moves=max_moves or self.settings.max_moves,
            min_throughput=self.settings.min_throughput,
        )  # fmt: skip

    def tick(self) -> list[tuple[str, int, int]]:
        """One round of the auto-balancer: the moves to start now (maybe none)."""
        if not (self.settings.enabled or self.draining) or self.settled() is not None:
            return []
        if len(self.state.alive_brokers()) < 2:
            return []
        p = self.plan()
        if not p.moves:
            return []
        # Moves finish well within a second; a report from before that would still show the old spread.
        after = time.monotonic() + 1.0
        self._awaiting = {b: after for m in p.moves for b in (m.source, m.target)}
        self.note(
            f"balancer: {len(p.moves)} moves; max/mean throughput {p.before.max_over_mean_throughput:.2f} -> "
            f"{p.after.max_over_mean_throughput:.2f}, partitions per broker {p.before.min_partitions}-"
            f"{p.before.max_partitions} -> {p.after.min_partitions}-{p.after.max_partitions}"
        )
        return [(m.key[0], m.key[1], m.target) for m in p.moves]

    def note(self, line: str) -> None:
        self.decisions.append(f"{time.strftime('%H:%M:%S')} {line}")
        del self.decisions[:-20]


def result(p: Plan) -> api.BalanceResult:
    def loads(spread: dict[int, tuple[int, float]]) -> list[api.BrokerLoad]:
        return [api.BrokerLoad(b, n, bps) for b, (n, bps) in sorted(spread.items())]

    return api.BalanceResult(
        moves=[api.BalanceMove(m.key[0], m.key[1], m.source, m.target) for m in p.moves],
        before=loads(p.before.per_broker),
        after=loads(p.after.per_broker),
        max_over_mean_before=p.before.max_over_mean_throughput,
        max_over_mean_after=p.after.max_over_mean_throughput,
        balanced=p.balanced,
        reason=p.reason,
        plan_ms=p.elapsed_s * 1000,
    )
