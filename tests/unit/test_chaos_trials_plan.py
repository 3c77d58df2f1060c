"""`amq chaos trials`: the seed decides the faults; options are checked; the report per fault kind."""

from __future__ import annotations

import pytest

from automq_cli.chaos.faults import FaultError
from automq_cli.chaos.trials import (
    FAULT_KINDS,
    Report,
    Trial,
    TrialsOptions,
    check_options,
    default_faults,
    parse_fault_kinds,
    plan_faults,
)
from engine.devtools.workload import Verdict, Violation


def test_the_seed_decides_the_faults() -> None:
    opts = TrialsOptions(count=50, seed=7, faults=list(FAULT_KINDS))
    first, again = plan_faults(opts), plan_faults(opts)
    assert first == again
    assert {f.kind for f in first} == set(FAULT_KINDS)
    assert plan_faults(TrialsOptions(count=50, seed=8, faults=list(FAULT_KINDS))) != first
    for f in first:
        assert 1.0 <= f.hold_s <= 5.0
        if f.kind in ("kill", "tear"):
            assert f.broker in (0, 1, 2)
        if f.kind == "zone":
            assert f.target in ("az1", "az2", "az3")
    only = plan_faults(TrialsOptions(count=20, seed=7, faults=["pause"]))
    assert {f.kind for f in only} == {"pause"} and "controller" in {f.target for f in only}


def test_fault_kinds_and_options() -> None:
    assert parse_fault_kinds("kill, s3,kill", "nfs") == ["kill", "s3"]
    assert "tear" not in default_faults("s3") and "tear" in default_faults("nfs")
    with pytest.raises(FaultError, match="none to tear"):
        parse_fault_kinds("tear", "s3")
    with pytest.raises(FaultError, match="unknown fault"):
        parse_fault_kinds("kill,nuke", "nfs")
    with pytest.raises(FaultError, match="empty"):
        parse_fault_kinds(" , ", "nfs")
    for bad in ({"count": 0}, {"brokers": 0}, {"rate": 0.0}, {"wal": "disk"}, {"seed": -1}):
        opts = TrialsOptions(**{"count": 1, "seed": 1, "faults": ["kill"], **bad})  # type: ignore[arg-type]
        with pytest.raises(FaultError):
            check_options(opts)


def test_report_per_kind_counts_violations_and_recovery() -> None:
    report = Report(options={}, command="amq chaos trials --seed 1", started_at="")
    report.trials = [Trial(0, "kill", "k", recovery_s=1.0, max_gap_s=3.0, acked=100),
                     Trial(1, "kill", "k", recovery_s=3.0, max_gap_s=4.0, acked=50),
                     Trial(2, "s3", "s", recovery_s=None, max_gap_s=120.0, acked=0)]  # fmt: skip
    lost = Violation("lost", 0, 5, "p0", 9)
    report.verdict = Verdict(acked=150, read=149, lost=[lost])
    report.attributed = {"kill": [{"kind": "lost", "trial": 1}]}
    rows = report.by_kind()
    assert rows["kill"]["trials"] == 2 and rows["kill"]["acked"] == 150 and rows["kill"]["lost"] == 1
    assert rows["kill"]["recovery_p50_s"] == 2.0 and rows["kill"]["recovery_max_s"] == 3.0
    assert rows["kill"]["gap_max_s"] == 4.0
    assert rows["s3"]["not_recovered"] == 1 and rows["s3"]["recovery_p50_s"] is None
    assert not report.ok
    out = report.to_json()
    assert out["violations"]["lost"] == 1 and out["violation_examples"][0]["seq"] == 9
