"""The local autoscaler: `amq cluster up --autoscale 1:4 --target-mibps X` runs it in the background.

Every few seconds it reads the brokers' traffic from the controller (bytes in + out that the
brokers report for the partitions they lead) and acts with the same code as `amq scale`:

- out: the mean per running broker stayed above the target for `out_after_s` -> one broker more;
- in: the whole load would fit on one broker fewer at under `in_fraction` of the target, for
  `in_after_s` -> the newest broker is drained by metadata and removed;
- never below min or above max, and nothing for `cooldown_s` after an action.

Its decisions go to its log and to `<dir>/autoscaler.json`, which `amq cluster status` shows.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger("amq.autoscaler")
DECISIONS_FILE = "autoscaler.json"


@dataclass
class Policy:
    """How long "a while" is scales with the interval: out after 3 looks, in after 6, then 6 looks' rest."""

    min_brokers: int
    max_brokers: int
    target_mibps: float
    interval_s: float = 5.0
    in_fraction: float = 0.6

    @property
    def out_after_s(self) -> float:
        return 3 * self.interval_s

    @property
    def in_after_s(self) -> float:
        return 6 * self.interval_s

    @property
    def cooldown_s(self) -> float:
        return 6 * self.interval_s


def parse_range(spec: str) -> tuple[int, int]:
    """'1:4' -> (1, 4); ValueError with a one-line reason otherwise."""
    lo, sep, hi = spec.partition(":")
    try:
        low, high = int(lo), int(hi)
    except ValueError:
        raise ValueError(f"--autoscale {spec!r}: expected MIN:MAX broker counts, like 1:4") from None
    if not sep or low < 1 or high < low or high > 16:
        raise ValueError(f"--autoscale {spec!r}: need 1 <= MIN <= MAX <= 16")
    return low, high


@dataclass
class Decider:
    """The rule alone (no I/O), so it can be tested with made-up loads."""

    policy: Policy
    above_since: float | None = None
    below_since: float | None = None
    last_action: float = float("-inf")

    def decide(self, now: float, brokers: int, total_mibps: float) -> tuple[str, str] | None:
        """('out' | 'in', why) when it is time to act, else None."""
        p = self.policy
        mean = total_mibps / max(brokers, 1)
        above = mean > p.target_mibps
        below = brokers > 1 and total_mibps / (brokers - 1) < p.in_fraction * p.target_mibps
        self.above_since = (self.above_since if self.above_since is not None else now) if above else None
        self.below_since = (self.below_since if self.below_since is not None else now) if below else None
        if now - self.last_action < p.cooldown_s:
            return None
        high = now - self.above_since if self.above_since is not None else 0.0
        low = now - self.below_since if self.below_since is not None else 0.0
        if brokers > p.max_brokers or brokers < p.min_brokers:
            kind = "in" if brokers > p.max_brokers else "out"
            return kind, f"{brokers} brokers is outside {p.min_brokers}:{p.max_brokers}"
        if above and brokers < p.max_brokers and high >= p.out_after_s:
            return "out", (f"{mean:.1f} MiB/s per broker over {brokers} brokers, above the target "
                           f"{p.target_mibps:g} for {high:.0f} s")  # fmt: skip
        if below and brokers > p.min_brokers and low >= p.in_after_s:
            fits = total_mibps / (brokers - 1)
            return "in", (f"{total_mibps:.1f} MiB/s in all would be {fits:.1f} per broker on {brokers - 1}, under "
                          f"{p.in_fraction:.0%} of the target for {low:.0f} s")  # fmt: skip
        return None


@dataclass
class Journal:
    """What the autoscaler decided, for its log and `amq cluster status`."""

    path: Path
    policy: Policy
    decisions: list[str] = field(default_factory=list)

    def note(self, line: str) -> None:
        log.info(line)
        self.decisions.append(f"{time.strftime('%H:%M:%S')} {line}")
        del self.decisions[:-20]
        self.write()

    def write(self) -> None:
        body = {"policy": asdict(self.policy), "decisions": self.decisions, "updated": time.time()}
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(body, indent=2))
        tmp.replace(self.path)


def read_journal(directory: str | Path) -> dict[str, Any] | None:
    try:
        data = json.loads((Path(directory) / DECISIONS_FILE).read_text())
        return data if isinstance(data, dict) else None
    except (OSError, ValueError):
        return None


def run(directory: Path, home: Path, policy: Policy, stop: list[bool]) -> None:
    from automq_cli.cluster.state import find_state
    from automq_cli.scale import ScaleError, add_brokers, drain_and_remove, spread
    from engine.controller import api
    from engine.controller.rpc import ControllerUnavailable, RpcError, request_sync

    journal = Journal(directory / DECISIONS_FILE, policy)
    journal.note(
        f"watching: {policy.min_brokers}:{policy.max_brokers} brokers, target {policy.target_mibps:g} MiB/s each"
    )
    decider = Decider(policy)
    while not stop[0]:
        waited = 0.0
        while waited < policy.interval_s and not stop[0]:
            time.sleep(0.1)
            waited += 0.1
        state = find_state(home, directory)
        if state is None or not state.get("controller"):
            continue
        try:
            status = request_sync(str(state["controller"]), api.Status(), timeout=5)
        except (ControllerUnavailable, RpcError) as e:
            log.warning("the controller does not answer: %s", e)
            continue
        running = [b for b in status.brokers if b.alive and not b.draining]
        total = sum(b.bytes_in_per_s + b.bytes_out_per_s for b in running) / 2**20
        decision = decider.decide(time.monotonic(), len(running), total)
        if decision is None or stop[0]:
            continue
        kind, why = decision
        try:
            if kind == "out":
                new = add_brokers(state, 1, None)
                moved = spread(state, new, as_json=True)
                journal.note(f"scale out: added broker {new[0]} ({why}); {moved} partitions moved to it")
            else:
                victim = max(b.id for b in running)
                moved, took = drain_and_remove(state, victim, next(b.partitions_led for b in running if b.id == victim))
                journal.note(f"scale in: removed broker {victim} ({why}); {moved} partitions moved off in {took:.1f} s")
        except ScaleError as e:
            journal.note(f"scale {kind} failed: {e}")
        except Exception as e:  # the autoscaler must outlive one failed action
            log.exception("scale %s failed", kind)
            journal.note(f"scale {kind} failed: {e}")
        decider.last_action = time.monotonic()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m automq_cli.autoscaler")
    parser.add_argument("--dir", required=True, help="the cluster's directory")
    parser.add_argument("--home", required=True, help="the cluster's AMQ_HOME")
    parser.add_argument("--range", required=True, help="MIN:MAX brokers")
    parser.add_argument("--target-mibps", type=float, required=True, help="MiB/s (in + out) per broker")
    parser.add_argument("--interval-s", type=float, default=5.0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    low, high = parse_range(args.range)
    policy = Policy(low, high, args.target_mibps, interval_s=args.interval_s)
    stop = [False]

    def on_signal(*_: Any) -> None:
        stop[0] = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    run(Path(args.dir), Path(args.home), policy, stop)
    return 0


if __name__ == "__main__":
    sys.exit(main())
