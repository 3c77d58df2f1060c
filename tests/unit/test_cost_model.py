"""The cost model's parts: units, pricing tables, sizing helpers, and how each line responds to its inputs."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
import yaml

from engine.cost import sizing
from engine.cost.errors import CostError
from engine.cost.inputs import DEFAULT_SCENARIO, build_inputs
from engine.cost.model import (
    AmqAssumptions,
    AmqOptions,
    KafkaOptions,
    Measured,
    Workload,
    assumptions_from,
    compare,
    estimate_amq,
    estimate_kafka,
    kafka_brokers_needed,
    to_dict,
)
from engine.cost.pricing import DEFAULT_PRICING, load_pricing, parse_overrides
from engine.cost.run import parse_run
from engine.cost.units import parse_hours, parse_rate_mib_s

PRICES = load_pricing()
MONTH_S = 730 * 3600


# --- units ---

@pytest.mark.parametrize(("text", "mib_s"), [
    ("1GiB/s", 1024.0), ("250", 250.0), ("250MiB/s", 250.0), ("100MB/s", 100e6 / 2**20), ("1GB/s", 1e9 / 2**20),
])
def test_parse_rate(text: str, mib_s: float) -> None:
    assert parse_rate_mib_s(text) == pytest.approx(mib_s)


@pytest.mark.parametrize("bad", ["-1MiB/s", "fast", "10furlongs/s"])
def test_parse_rate_rejects(bad: str) -> None:
    with pytest.raises(CostError):
        parse_rate_mib_s(bad)


def test_parse_hours() -> None:
    assert parse_hours("3d") == 72
    assert parse_hours("24h") == 24
    assert parse_hours("1w") == 168
    with pytest.raises(CostError):
        parse_hours("-2d")


# --- pricing tables ---

def test_every_price_has_a_source_and_date() -> None:
    for key, (source, date) in PRICES.sources.items():
        assert source and date, key
    assert "ec2.instances.r6in.large" in PRICES.sources
    assert "issue 6" in PRICES.sources["ec2.instances.r6in.large"][0]


def test_reference_prices_of_the_issue() -> None:
    assert PRICES.gp3.usd_per_gib_month == 0.08
    assert PRICES.s3.storage_tiers[0].usd_per_gib_month == 0.023
    assert PRICES.cross_az_usd_per_gib == pytest.approx(0.02)
    assert PRICES.instance("r6in.large").usd_per_hour == pytest.approx(0.1743, abs=5e-5)


def test_s3_storage_is_tiered() -> None:
    s3 = PRICES.s3
    assert s3.storage_usd(1000) == pytest.approx(23.0)
    assert s3.storage_usd(51200) == pytest.approx(51200 * 0.023)
    assert s3.storage_usd(51200 + 1000) == pytest.approx(51200 * 0.023 + 1000 * 0.022)
    top = 51200 * 0.023 + (512000 - 51200) * 0.022 + 1000 * 0.021
    assert s3.storage_usd(513000) == pytest.approx(top)


def test_price_override_and_unknown_key() -> None:
    table = load_pricing(overrides=parse_overrides(["ec2.instances.m7g.large.usd_per_hour=0.05"]))
    assert table.instance("m7g.large").usd_per_hour == 0.05
    with pytest.raises(CostError, match=re.escape("unknown pricing key 's3_standard.put'")):
        load_pricing(overrides={"s3_standard.put": "1"})
    with pytest.raises(CostError, match="wants a number"):
        load_pricing(overrides={"s3_standard.usd_per_1000_put": "cheap"})
    with pytest.raises(CostError, match="KEY=VALUE"):
        parse_overrides(["nonsense"])


def _write_table(tmp_path: Path, mutate: object) -> Path:
    raw = yaml.safe_load(DEFAULT_PRICING.read_text())
    mutate(raw)  # type: ignore[operator]
    path = tmp_path / "table.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_pricing_file_with_unknown_key_is_refused(tmp_path: Path) -> None:
    path = _write_table(tmp_path, lambda raw: raw["s3_standard"].__setitem__("usd_per_1000_putt", 1))
    with pytest.raises(CostError, match=re.escape("unknown pricing key 's3_standard.usd_per_1000_putt'")):
        load_pricing(path)


def test_pricing_file_price_without_source_is_refused(tmp_path: Path) -> None:
    path = _write_table(tmp_path, lambda raw: raw["network"].pop("source"))
    with pytest.raises(CostError, match="no source and date"):
        load_pricing(path)


def test_pricing_file_negative_price_is_refused(tmp_path: Path) -> None:
    path = _write_table(tmp_path, lambda raw: raw["ebs_gp3"].__setitem__("usd_per_gib_month", -1))
    with pytest.raises(CostError, match="non-negative"):
        load_pricing(path)


def test_unreadable_pricing_file(tmp_path: Path) -> None:
    with pytest.raises(CostError, match="cannot read pricing table"):
        load_pricing(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("ec2: [unclosed\n")
    with pytest.raises(CostError, match="not valid YAML"):
        load_pricing(bad)


def test_unknown_instance_type() -> None:
    with pytest.raises(CostError, match=re.escape("unknown instance type 'm9.huge'")):
        estimate_amq(Workload(), AmqOptions(instance_type="m9.huge"), PRICES)


# --- sizing helpers ---

def test_aku() -> None:
    assert sizing.akus(1024, 1024).akus == 52
    assert sizing.akus(20, 20).akus == 1
    assert sizing.akus(10, 10, requests_per_s=8000).akus == 10
    assert sizing.akus(10, 10, partitions=2250).akus == 2


@pytest.mark.parametrize(("peak", "count", "mbps"), [
    (100, 1, 384), (150, 1, 384), (151, 1, 768), (300, 1, 768), (600, 1, 1536), (1024, 2, 1536),
    (1200, 2, 1536), (1201, 3, 1536),
])
def test_fsx_plan(peak: float, count: int, mbps: float) -> None:
    plan = sizing.fsx_plan(PRICES.fsx, peak)
    assert (plan.count, plan.tier.mbps) == (count, mbps)
    assert plan.carries_mib_s >= peak


def test_fsx_tiers_of_the_issue() -> None:
    carried = {t.mbps: t.wal_write_mib_s for t in PRICES.fsx.throughput_tiers}
    assert carried == {384: 150, 768: 300, 1536: 600}


def test_over_provisioning_bounds() -> None:
    assert sizing.headroom(0.5) == 0.5
    with pytest.raises(CostError):
        sizing.headroom(1.0)
    with pytest.raises(CostError):
        AmqOptions(over_provisioning=-0.1)


# --- the model's lines ---

def test_negative_throughput_is_refused() -> None:
    with pytest.raises(CostError, match="write throughput"):
        Workload(write_mib_s=-1)
    with pytest.raises(CostError):
        Workload.with_profile([10, -5])


def test_kafka_cross_zone_is_replicas_plus_clients() -> None:
    w = Workload(write_mib_s=1024, read_fanout=1, retention_hours=72, zones=3)
    line = estimate_kafka(w, KafkaOptions(), PRICES).line("cross_zone")
    month_gib = 1024 * MONTH_S / 1024
    assert line.amounts["gib"] == pytest.approx(month_gib * (2 + 2 / 3 + 2 / 3))
    rack_aware = estimate_kafka(w, KafkaOptions(rack_aware_fetch=True), PRICES).line("cross_zone")
    assert rack_aware.amounts["gib"] == pytest.approx(month_gib * (2 + 2 / 3))
    one_zone = estimate_kafka(Workload(write_mib_s=1024, zones=1), KafkaOptions(), PRICES).line("cross_zone")
    assert one_zone.usd == 0


def test_amq_cross_zone_is_zero_with_zone_routing_only() -> None:
    w = Workload(write_mib_s=100, zones=3)
    routed = estimate_amq(w, AmqOptions(wal="s3"), PRICES).line("cross_zone")
    assert routed.usd == 0
    plain = estimate_amq(w, AmqOptions(wal="s3", assumptions=AmqAssumptions(zone_routing=False)), PRICES)
    assert plain.line("cross_zone").amounts["gib"] == pytest.approx(2 / 3 * 200 * MONTH_S / 1024)


def test_kafka_sizing_bounds() -> None:
    # Long retention: disk capacity binds (16 TiB per gp3 volume).
    need = kafka_brokers_needed(Workload(write_mib_s=1024, retention_hours=72), KafkaOptions(), PRICES)
    assert need.brokers == 95 and need.binding == "disk capacity"
    # Short retention: bandwidth binds; never fewer brokers than replicas.
    small = estimate_kafka(Workload(write_mib_s=1, retention_hours=1), KafkaOptions(), PRICES)
    assert small.line("compute").amounts["instances"] == 3


def test_amq_wal_kinds_differ_where_they_should() -> None:
    w = Workload(write_mib_s=500, zones=3)
    s3, file, nfs = (estimate_amq(w, AmqOptions(wal=k), PRICES) for k in ("s3", "file", "nfs"))
    assert s3.line("wal").usd == 0
    assert file.line("wal").amounts["volumes"] >= 3
    assert nfs.line("wal").amounts["file_systems"] == 1 and nfs.line("wal").amounts["mbps"] == 1536
    # The s3 WAL writes small WAL objects often: more PUTs than stream-set uploads.
    assert s3.line("s3_api").amounts["put"] > file.line("s3_api").amounts["put"]
    # Object storage does not depend on the WAL.
    assert s3.line("object_storage").usd == file.line("object_storage").usd == nfs.line("object_storage").usd


def test_s3_api_follows_upload_size() -> None:
    w = Workload(write_mib_s=1024, read_fanout=0, zones=1)
    def puts(mib: float) -> float:
        opts = AmqOptions(wal="file", instances=45, assumptions=assumptions_from(
            {"upload_object_mib": mib, "compaction_rewrite_ratio": 0}))
        return estimate_amq(w, opts, PRICES).line("s3_api").amounts["put"]
    assert puts(16) == pytest.approx(1024 / 16 * MONTH_S)
    assert puts(8) == pytest.approx(2 * puts(16))


def test_upload_interval_bounds_puts_at_low_rates() -> None:
    w = Workload(write_mib_s=1, read_fanout=0, zones=1)
    opts = AmqOptions(wal="file", instances=10, assumptions=AmqAssumptions(compaction_rewrite_ratio=0))
    # 10 brokers each upload at least every 2 s: 5 PUT/s, far above 1 MiB/s / 32 MiB.
    assert estimate_amq(w, opts, PRICES).line("s3_api").amounts["put_per_s"] == pytest.approx(5.0)


def test_unknown_assumption() -> None:
    with pytest.raises(CostError, match="unknown assumption 'upload_mib'"):
        assumptions_from({"upload_mib": 4})


def test_profile_autoscaling() -> None:
    profile = [10.0] * 23 + [1000.0]
    w = Workload.with_profile(profile, read_fanout=1, zones=3)
    assert w.peak_write == 1000 and w.mean_write == pytest.approx(sum(profile) / 24)
    amq = estimate_amq(w, AmqOptions(wal="s3"), PRICES).line("compute").amounts
    assert amq["instances_min"] == 3 and amq["instances_max"] > 3
    flat = estimate_amq(Workload(write_mib_s=1000, zones=3), AmqOptions(wal="s3"), PRICES)
    assert flat.line("compute").usd > estimate_amq(w, AmqOptions(wal="s3"), PRICES).line("compute").usd


def test_measured_rates_replace_assumptions() -> None:
    w = Workload(write_mib_s=1024, zones=3)
    measured = Measured(source="run.json", wal_kind="s3", s3_put_per_mib=2.0, s3_get_per_mib=0.5,
                        s3_list_per_mib=0.01, cross_zone_bytes_per_byte=0.001)
    line = estimate_amq(w, AmqOptions(wal="s3"), PRICES, measured).line("s3_api")
    assert line.amounts["put"] == pytest.approx(2.0 * 1024 * MONTH_S)
    assert line.amounts["get"] == pytest.approx(0.5 * 1024 * MONTH_S)
    assert line.amounts["from_run"] == 1.0
    cross = estimate_amq(w, AmqOptions(wal="s3"), PRICES, measured).line("cross_zone")
    assert cross.amounts["gib"] == pytest.approx(0.001 * 1024 * MONTH_S / 1024)
    # A run on another WAL kind does not price this kind.
    other = estimate_amq(w, AmqOptions(wal="nfs"), PRICES, measured).line("s3_api")
    assert other.amounts["from_run"] == 0.0


def test_parse_run_rates() -> None:
    run = parse_run({"duration_s": 10, "produce": {"bytes": 100 * 2**20}, "consume": {"mib_per_s": 20},
                     "cluster": {"wal_kind": "file", "zones": 1, "s3": {"put": 50, "get": 10}}})
    assert run.produce_mib_s == pytest.approx(10)
    assert run.read_fanout == pytest.approx(2)
    assert run.measured.s3_put_per_mib == pytest.approx(0.5)
    assert "cross_zone_bytes" in run.missing and "s3.list" in run.missing
    with pytest.raises(CostError, match="no produce throughput"):
        parse_run({"duration_s": 10, "produce": {}})
    other = parse_run({"duration_s": 10, "produce": {"mib_per_s": 1},
                       "cluster": {"wal_kind": "tansu-s3", "s3": {"put": 5, "get": 5}}})
    assert other.wal_kind is None and other.measured.s3_put_per_mib is None
    assert any("tansu-s3" in m for m in other.missing)


def test_default_inputs_and_json_view() -> None:
    inputs = build_inputs(DEFAULT_SCENARIO)
    c = compare(inputs.workload, inputs.amq, inputs.kafka, PRICES)
    assert [e.system for e in c.amq] == ["amq-s3", "amq-file", "amq-nfs"]
    out = to_dict(c)
    assert [s["system"] for s in out["systems"]] == ["amq-s3", "amq-file", "amq-nfs", "kafka"]
    for system in out["systems"]:
        assert sum(line["usd_per_month"] for line in system["lines"]) == pytest.approx(
            system["total_usd_per_month"], abs=0.05)
        for line in system["lines"]:
            assert line["quantity"]
    assert all(s["saving_vs_kafka"]["percent"] > 0 for s in out["systems"][:3])
    assert not math.isnan(out["workload"]["stored_gib"])
