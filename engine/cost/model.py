"""The monthly cost model: amq (by WAL kind) and Apache Kafka (RF 3), line by line.

Pure: inputs are typed objects and a PriceTable, output is a Comparison of
Estimates whose Lines each carry the quantity behind the price. Nothing here
reads files, the clock or the network. The assumptions, and which published
figure each one was checked against, are in engine/cost/ASSUMPTIONS.md; the
short form is in the docstrings of the option classes below.

A month is the price table's `hours_per_month` (730 for AWS). A traffic profile
is 24 hourly write rates over a day repeated all month: amq's compute follows
it hour by hour when sized automatically (brokers are stateless, so scaling in
and out is cheap), while Kafka, FSx and EBS are sized for the peak hour.
Storage, S3 calls and cross-zone traffic follow the mean.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any, Literal, cast

from engine.cost import sizing
from engine.cost.errors import CostError
from engine.cost.pricing import PriceTable
from engine.cost.units import SECONDS_PER_HOUR, mb_s_to_mib_s, mib_s_to_mb_s

WalKind = Literal["s3", "file", "nfs"]
WAL_KINDS: tuple[WalKind, ...] = ("s3", "file", "nfs")
WAL_TITLES: Mapping[str, str] = {
    "s3": "amq, S3 WAL",
    "file": "amq, block-volume WAL",
    "nfs": "amq, FSx ONTAP WAL",
}
LINE_KEYS: tuple[str, ...] = (
    "compute", "wal", "object_storage", "s3_api", "block_storage", "block_throughput", "cross_zone",
)
LINE_LABELS: Mapping[str, str] = {
    "compute": "Compute",
    "wal": "WAL storage",
    "object_storage": "Object storage",
    "s3_api": "S3 API calls",
    "block_storage": "Block storage",
    "block_throughput": "Block storage throughput",
    "cross_zone": "Cross-zone traffic",
}
EbsThroughput = Literal["baseline", "instance", "needed"]


def _check(cond: bool, message: str) -> None:
    if not cond:
        raise CostError(message)


def _finite(name: str, value: float, *, minimum: float = 0.0, strict: bool = False) -> None:
    ok = math.isfinite(value) and (value > minimum if strict else value >= minimum)
    _check(ok, f"{name} must be {'>' if strict else '>='} {minimum:g}, got {value:g}")


@dataclass(frozen=True)
class Workload:
    """What the user states about traffic.

    write_mib_s is the (peak) produce rate; with a profile it is the profile's
    peak. Reads are read_fanout x writes, hour by hour (fan-out 1 = every byte
    written is read once).
    """

    write_mib_s: float = 100.0
    read_fanout: float = 1.0
    retention_hours: float = 72.0
    zones: int = 3
    profile: tuple[float, ...] | None = None  # hourly write MiB/s over a day
    partitions: int | None = None
    requests_per_s: float | None = None

    def __post_init__(self) -> None:
        _finite("write throughput", self.write_mib_s)
        _finite("read fan-out", self.read_fanout)
        _finite("retention", self.retention_hours)
        _check(isinstance(self.zones, int) and self.zones >= 1, f"zones must be a whole number >= 1, got {self.zones}")
        if self.profile is not None:
            _check(len(self.profile) > 0, "a traffic profile needs at least one hourly value")
            for i, value in enumerate(self.profile):
                _finite(f"traffic profile value {i + 1}", value)
            _check(abs(max(self.profile) - self.write_mib_s) < 1e-6,
                   "with a profile, write_mib_s must be the profile's peak (use Workload.with_profile)")
        if self.partitions is not None:
            _check(self.partitions >= 0, f"partitions must not be negative, got {self.partitions}")
        if self.requests_per_s is not None:
            _finite("requests per second", self.requests_per_s)

    @classmethod
    def with_profile(cls, profile: Sequence[float], **kwargs: Any) -> Workload:
        values = tuple(float(v) for v in profile)
        _check(len(values) > 0, "a traffic profile needs at least one hourly value")
        for i, value in enumerate(values):
            _finite(f"traffic profile value {i + 1}", value)
        return cls(write_mib_s=max(values), profile=values, **kwargs)

    @property
    def hourly_write(self) -> tuple[float, ...]:
        return self.profile if self.profile is not None else (self.write_mib_s,)

    @property
    def peak_write(self) -> float:
        return max(self.hourly_write)

    @property
    def mean_write(self) -> float:
        return sum(self.hourly_write) / len(self.hourly_write)

    @property
    def peak_read(self) -> float:
        return self.peak_write * self.read_fanout

    @property
    def mean_read(self) -> float:
        return self.mean_write * self.read_fanout

    @property
    def stored_gib(self) -> float:
        """One copy of the retained data: mean write rate x retention."""
        return self.mean_write * self.retention_hours * SECONDS_PER_HOUR / 1024


@dataclass(frozen=True)
class AmqAssumptions:
    """How amq turns bytes into S3 calls, network and volumes (defaults mirror engine/storage/config.py).

    - upload_object_mib / upload_interval_s: a broker uploads one stream-set
      object when this much durable data waits or when the oldest has waited
      this long (0 = size only); one PUT each, whatever the partition count.
    - compaction_rewrite_ratio: share of written bytes the compactor rewrites
      once (stream-set -> stream objects); it GETs them in compaction_read_mib
      pieces and PUTs compaction_object_mib parts.
    - s3_read_ratio: share of consumer reads served from S3 (ranged GETs of
      get_block_mib) instead of the log cache. None = (zones - 1) / zones with
      zone routing (a consumer's own-zone broker is not the leader 2 times in 3
      and reads shared storage), else 0 (tail reads hit the log cache).
    - s3_wal_object_mib / s3_wal_interval_s: the s3 WAL writes one WAL object
      per broker per interval or per this many MiB; those objects are the
      stream-set objects, so the s3 kind has no separate upload.
    - file_wal_volume_gib: the `file` kind's block volume per broker.
    - zone_routing: clients name their zone and are served by a broker there
      (the zone router, docs/zones.md, with the nfs and s3 WALs), so no data byte
      crosses a zone; the router's pointers do (a few % of the data with small
      batches) and only `--from-run` prices them. Off: 2 in 3 produce and fetch
      requests reach a broker in another zone, as with Kafka (the file WAL, or
      clients that do not name their zone).
    """

    upload_object_mib: float = 32.0
    upload_interval_s: float = 2.0
    compaction_rewrite_ratio: float = 0.5
    compaction_object_mib: float = 64.0
    compaction_read_mib: float = 32.0
    s3_read_ratio: float | None = None
    get_block_mib: float = 2.0
    s3_wal_object_mib: float = 8.0
    s3_wal_interval_s: float = 0.25
    file_wal_volume_gib: float = 10.0
    zone_routing: bool = True

    def __post_init__(self) -> None:
        for name in ("upload_object_mib", "compaction_object_mib", "compaction_read_mib", "get_block_mib",
                     "s3_wal_object_mib", "file_wal_volume_gib"):
            _finite(name, getattr(self, name), strict=True)
        for name in ("upload_interval_s", "compaction_rewrite_ratio", "s3_wal_interval_s"):
            _finite(name, getattr(self, name))
        if self.s3_read_ratio is not None:
            _check(0 <= self.s3_read_ratio <= 1, f"s3_read_ratio must be in [0, 1], got {self.s3_read_ratio}")

    def read_ratio(self, zones: int) -> float:
        if self.s3_read_ratio is not None:
            return self.s3_read_ratio
        return (zones - 1) / zones if self.zone_routing else 0.0


ASSUMPTION_KEYS: tuple[str, ...] = tuple(f.name for f in fields(AmqAssumptions))


def assumptions_from(values: Mapping[str, Any], base: AmqAssumptions | None = None) -> AmqAssumptions:
    """Build assumptions from a mapping; an unknown key is an error, not a silent default."""
    base = base or AmqAssumptions()
    merged: dict[str, Any] = {f.name: getattr(base, f.name) for f in fields(AmqAssumptions)}
    for key, value in values.items():
        if key not in merged:
            raise CostError(f"unknown assumption {key!r} (known: {', '.join(ASSUMPTION_KEYS)})")
        merged[key] = _coerce(key, value, merged[key])
    return AmqAssumptions(**merged)


def _coerce(key: str, value: Any, current: Any) -> Any:
    if key == "zone_routing":
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in ("true", "yes", "on", "1"):
            return True
        if text in ("false", "no", "off", "0"):
            return False
        raise CostError(f"assumption zone_routing wants true or false, got {value!r}")
    if value is None or (isinstance(value, str) and value.strip().lower() in ("none", "null", "auto")):
        if key == "s3_read_ratio":
            return None
        raise CostError(f"assumption {key} wants a number, got {value!r}")
    try:
        return float(value)
    except (TypeError, ValueError):
        raise CostError(f"assumption {key} wants a number, got {value!r}") from None


@dataclass(frozen=True)
class AmqOptions:
    """The amq cluster: WAL kind, instance type, and a stated broker count or None to size it."""

    wal: WalKind = "s3"
    instance_type: str = "m7g.large"
    instances: int | None = None
    over_provisioning: float = 0.2
    assumptions: AmqAssumptions = field(default_factory=AmqAssumptions)

    def __post_init__(self) -> None:
        _check(self.wal in WAL_KINDS, f"unknown WAL kind {self.wal!r} (use s3, file or nfs)")
        if self.instances is not None:
            _check(self.instances >= 1, f"amq instance count must be >= 1, got {self.instances}")
        sizing.headroom(self.over_provisioning)


@dataclass(frozen=True)
class KafkaOptions:
    """Apache Kafka on EC2 + gp3, one data volume per broker, replicas in distinct zones.

    ebs_throughput: gp3 throughput each volume is provisioned with: "baseline"
    (the free 125 MB/s), "instance" (up to the instance's EBS baseline, so the
    volume is never the bottleneck), "needed" (what the peak writes need), or
    a number of MB/s. rack_aware_fetch: consumers fetch from a replica in their
    own zone (KIP-392), so reads do not cross zones.
    """

    instance_type: str = "r5.xlarge"
    instances: int | None = None
    replication_factor: int = 3
    over_provisioning: float = 0.5
    ebs_throughput: EbsThroughput | float = "instance"
    rack_aware_fetch: bool = False

    def __post_init__(self) -> None:
        if self.instances is not None:
            _check(self.instances >= 1, f"Kafka instance count must be >= 1, got {self.instances}")
        _check(self.replication_factor >= 1, f"replication factor must be >= 1, got {self.replication_factor}")
        sizing.headroom(self.over_provisioning)
        if isinstance(self.ebs_throughput, str):
            _check(self.ebs_throughput in ("baseline", "instance", "needed"),
                   f"ebs_throughput must be baseline, instance, needed or MB/s, got {self.ebs_throughput!r}")
        else:
            _finite("ebs_throughput", float(self.ebs_throughput), strict=True)


@dataclass(frozen=True)
class Measured:
    """Rates counted by an `amq perf` run, per MiB produced; None = not measured, use the assumption."""

    source: str
    wal_kind: str | None = None  # the run's WAL kind: its S3 counts price only that kind
    s3_put_per_mib: float | None = None
    s3_get_per_mib: float | None = None
    s3_list_per_mib: float | None = None
    cross_zone_bytes_per_byte: float | None = None


@dataclass(frozen=True)
class Line:
    key: str
    label: str
    quantity: str  # what a reader multiplies by the price to check the line
    price: str
    usd: float
    amounts: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Estimate:
    system: str  # "amq-s3", "amq-file", "amq-nfs", "kafka"
    title: str
    lines: tuple[Line, ...]
    notes: tuple[str, ...] = ()

    def line(self, key: str) -> Line:
        for line in self.lines:
            if line.key == key:
                return line
        raise KeyError(key)

    @property
    def total(self) -> float:
        return sum(line.usd for line in self.lines)


@dataclass(frozen=True)
class Saving:
    usd: float
    percent: float
    ratio: float  # Kafka's total / this system's total


@dataclass(frozen=True)
class Comparison:
    workload: Workload
    pricing: str
    amq: tuple[Estimate, ...]
    kafka: Estimate
    notes: tuple[str, ...] = ()

    def saving(self, estimate: Estimate) -> Saving:
        kafka = self.kafka.total
        usd = kafka - estimate.total
        percent = 100.0 * usd / kafka if kafka > 0 else 0.0
        ratio = kafka / estimate.total if estimate.total > 0 else math.inf
        return Saving(usd, percent, ratio)


def _none(key: str) -> Line:
    return Line(key, LINE_LABELS[key], "—", "—", 0.0, {})


def _money(x: float) -> str:
    return f"${x:,.5f}".rstrip("0").rstrip(".") if x < 1 else f"${x:,.2f}"


def _n(x: float) -> str:
    return f"{x:,.0f}" if abs(x - round(x)) < 1e-9 or x >= 100 else f"{x:,.1f}"


def _hours_text(hours: float) -> str:
    if hours >= 24 and abs(hours / 24 - round(hours / 24)) < 1e-9:
        days = round(hours / 24)
        return f"{days} day" + ("s" if days != 1 else "")
    return f"{hours:g} h"


def _compute_line(instance_type: str, per_hour: Sequence[int], prices: PriceTable) -> Line:
    inst = prices.instance(instance_type)
    hours = prices.hours_per_month
    avg = sum(per_hour) / len(per_hour)
    instance_hours = avg * hours
    usd = instance_hours * inst.usd_per_hour
    if min(per_hour) == max(per_hour):
        quantity = f"{per_hour[0]} × {instance_type} × {hours:g} h"
    else:
        quantity = (f"{instance_hours:,.0f} instance-hours of {instance_type} "
                    f"({min(per_hour)}–{max(per_hour)} brokers by hour, mean {avg:.2f})")
    return Line("compute", LINE_LABELS["compute"], quantity, f"{_money(inst.usd_per_hour)}/h", usd,
                {"instances": avg, "instances_min": min(per_hour), "instances_max": max(per_hour),
                 "instance_hours": instance_hours, "usd_per_hour": inst.usd_per_hour})


def _cross_zone_line(gib: float, parts: str, prices: PriceTable) -> Line:
    usd = gib * prices.cross_az_usd_per_gib
    quantity = f"{gib:,.0f} GiB" + (f" = {parts}" if parts else "")
    return Line("cross_zone", LINE_LABELS["cross_zone"], quantity,
                f"{_money(prices.cross_az_usd_per_gib)}/GiB ({_money(prices.cross_az_usd_per_gib_each_way)} each way)",
                usd, {"gib": gib})


def _object_storage_line(stored_gib: float, workload: Workload, prices: PriceTable) -> Line:
    usd = prices.s3.storage_usd(stored_gib)
    tiers = prices.s3.storage_tiers
    first, last = tiers[0].usd_per_gib_month, tiers[-1].usd_per_gib_month
    price = f"{_money(first)}/GiB-month" if stored_gib <= tiers[0].up_to_gib else \
        f"{_money(first)}→{_money(last)}/GiB-month, tiered"
    quantity = (f"{stored_gib:,.0f} GiB ({stored_gib / 1024:,.1f} TiB) = {_n(workload.mean_write)} MiB/s × "
                f"{_hours_text(workload.retention_hours)}, S3 Standard")
    return Line("object_storage", LINE_LABELS["object_storage"], quantity, price, usd,
                {"gib": stored_gib, "tib": stored_gib / 1024})


def amq_brokers_needed(workload: Workload, opts: AmqOptions, prices: PriceTable) -> list[sizing.BrokerNeed]:
    """Brokers each hour of the profile needs, from the instance's baseline network (and EBS for `file`)."""
    inst = prices.instance(opts.instance_type)
    a = opts.assumptions
    room = sizing.headroom(opts.over_provisioning)
    net = sizing.network_mib_s(inst) * room
    read_ratio = a.read_ratio(workload.zones)
    # Egress per MiB written: the WAL copy when it goes over the network (nfs), the
    # S3 upload (for the s3 kind the WAL objects are the upload), compaction output.
    wal_copies = {"nfs": 2.0, "file": 1.0, "s3": 1.0}[opts.wal]
    needs = []
    for w in workload.hourly_write:
        r = w * workload.read_fanout
        egress = w * (wal_copies + a.compaction_rewrite_ratio) + r
        ingress = w * (1 + a.compaction_rewrite_ratio) + r * read_ratio
        bounds = {"network": max(egress, ingress) / net}
        if opts.wal == "file":
            bounds["WAL volume bandwidth"] = w / (sizing.ebs_mib_s(inst) * room)
        needs.append(sizing.brokers_for(bounds, minimum=workload.zones))
    return needs


def estimate_amq(workload: Workload, opts: AmqOptions, prices: PriceTable,
                 measured: Measured | None = None) -> Estimate:
    a = opts.assumptions
    notes: list[str] = []
    if measured is not None and measured.wal_kind not in (None, opts.wal):
        notes.append(f"the run used the {measured.wal_kind} WAL: this {opts.wal} estimate uses the model's "
                     f"assumptions, not the run's counts")
        measured = None
    needs = amq_brokers_needed(workload, opts, prices)
    if opts.instances is None:
        per_hour = [need.brokers for need in needs]
        peak = max(needs, key=lambda need: need.brokers)
        notes.append(f"sized: {peak.brokers} × {opts.instance_type} at the peak hour "
                     f"(bound by {peak.binding}; {opts.over_provisioning:.0%} over-provisioning)")
    else:
        per_hour = [opts.instances] * len(workload.hourly_write)
        wanted = max(need.brokers for need in needs)
        notes.append(f"stated: {opts.instances} × {opts.instance_type} (the model's sizing needs {wanted} "
                     f"at {opts.over_provisioning:.0%} over-provisioning)")
    hours = prices.hours_per_month
    seconds = hours * SECONDS_PER_HOUR
    brokers_avg = sum(per_hour) / len(per_hour)

    lines = [_compute_line(opts.instance_type, per_hour, prices)]

    # WAL storage.
    if opts.wal == "nfs":
        plan = sizing.fsx_plan(prices.fsx, workload.peak_write)
        usd = plan.count * prices.fsx.file_system_usd(plan.tier)
        lines.append(Line(
            "wal", LINE_LABELS["wal"],
            f"{plan.count} × FSx ONTAP Multi-AZ {plan.tier.mbps:,.0f} MBps + {prices.fsx.min_ssd_gib:,.0f} GiB SSD "
            f"(carry {plan.carries_mib_s:,.0f} MiB/s of writes; peak {_n(workload.peak_write)})",
            f"{_money(prices.fsx.usd_per_mbps_month)}/MBps-month + {_money(prices.fsx.usd_per_ssd_gib_month)}"
            f"/GiB-month", usd,
            {"file_systems": plan.count, "mbps": plan.tier.mbps, "ssd_gib": prices.fsx.min_ssd_gib}))
        notes.append("FSx Multi-AZ replicates across zones inside its throughput price: no cross-zone line")
    elif opts.wal == "file":
        gp3 = prices.gp3
        per_broker_mb_s = max(mib_s_to_mb_s(w / n) for w, n in zip(workload.hourly_write, per_hour, strict=True))
        wanted_mb_s = min(gp3.max_mbps, max(gp3.baseline_mbps, math.ceil(per_broker_mb_s - 1e-9)))
        extra = wanted_mb_s - gp3.baseline_mbps
        per_volume = a.file_wal_volume_gib * gp3.usd_per_gib_month + extra * gp3.usd_per_mbps_month
        usd = brokers_avg * per_volume
        quantity = f"{_n(brokers_avg)} × gp3 {a.file_wal_volume_gib:g} GiB (one per broker)"
        if extra > 0:
            quantity += f", {wanted_mb_s:g} MB/s each (+{extra:g} MB/s)"
        lines.append(Line("wal", LINE_LABELS["wal"], quantity,
                          f"{_money(gp3.usd_per_gib_month)}/GiB-month + {_money(gp3.usd_per_mbps_month)}/MB/s-month",
                          usd, {"volumes": brokers_avg, "gib_each": a.file_wal_volume_gib,
                                "extra_mbps_each": extra}))
        if workload.zones > 1:
            notes.append("block-volume WAL: a volume lives in one zone; if that zone fails, its un-uploaded "
                         "writes wait for the zone (no data loss, but not readable until it returns)")
    else:
        lines.append(Line("wal", LINE_LABELS["wal"], "WAL objects in S3 (their PUTs are under S3 API calls)",
                          "—", 0.0, {}))

    lines.append(_object_storage_line(workload.stored_gib, workload, prices))

    # S3 API calls, per second averaged over the day, then per month.
    read_ratio = a.read_ratio(workload.zones)
    put_s = get_s = list_s = 0.0
    for w, n in zip(workload.hourly_write, per_hour, strict=True):
        r = w * workload.read_fanout
        if w > 0:
            if opts.wal == "s3":
                by_time = n / a.s3_wal_interval_s if a.s3_wal_interval_s > 0 else 0.0
                put_s += max(w / a.s3_wal_object_mib, by_time)
            else:
                by_time = n / a.upload_interval_s if a.upload_interval_s > 0 else 0.0
                put_s += max(w / a.upload_object_mib, by_time)
        put_s += w * a.compaction_rewrite_ratio / a.compaction_object_mib
        get_s += r * read_ratio / a.get_block_mib + w * a.compaction_rewrite_ratio / a.compaction_read_mib
    count = len(workload.hourly_write)
    put_s, get_s = put_s / count, get_s / count
    source = "model"
    if measured is not None and measured.s3_put_per_mib is not None and measured.s3_get_per_mib is not None:
        put_s = measured.s3_put_per_mib * workload.mean_write
        get_s = measured.s3_get_per_mib * workload.mean_write
        list_s = (measured.s3_list_per_mib or 0.0) * workload.mean_write
        source = "run"
        notes.append(f"S3 calls from the run ({measured.source}): {measured.s3_put_per_mib:.4g} PUT, "
                     f"{measured.s3_get_per_mib:.4g} GET, {measured.s3_list_per_mib or 0:.4g} LIST per MiB written")
    elif measured is not None:
        notes.append("S3 calls: the run counted none (not run against amq?); using the model's assumptions")
    puts, gets, lists = put_s * seconds, get_s * seconds, list_s * seconds
    s3 = prices.s3
    usd = (puts + lists) / 1000 * s3.usd_per_1000_put + gets / 1000 * s3.usd_per_1000_get
    quantity = f"{puts + gets + lists:,.0f} calls = {puts:,.0f} PUT + {gets:,.0f} GET"
    if lists:
        quantity += f" + {lists:,.0f} LIST"
    quantity += f" ({put_s + get_s + list_s:,.1f}/s" + (", rates counted in the run)" if source == "run" else ")")
    lines.append(Line("s3_api", LINE_LABELS["s3_api"], quantity,
                      f"{_money(s3.usd_per_1000_put)} PUT, {_money(s3.usd_per_1000_get)} GET per 1,000", usd,
                      {"calls": puts + gets + lists, "put": puts, "get": gets, "list": lists,
                       "put_per_s": put_s, "get_per_s": get_s, "list_per_s": list_s,
                       "from_run": 1.0 if source == "run" else 0.0}))

    lines.append(Line("block_storage", LINE_LABELS["block_storage"], "none: brokers keep no data", "—", 0.0, {}))
    lines.append(_none("block_throughput"))

    # Cross-zone traffic.
    month_gib_written = workload.mean_write * seconds / 1024
    if measured is not None and measured.cross_zone_bytes_per_byte is not None:
        gib = measured.cross_zone_bytes_per_byte * month_gib_written
        lines.append(_cross_zone_line(gib, f"{measured.cross_zone_bytes_per_byte:.4g} B per B written, "
                                           f"measured", prices))
        notes.append(f"cross-zone bytes from the run ({measured.source})")
    elif workload.zones == 1:
        lines.append(_cross_zone_line(0.0, "one zone", prices))
    elif a.zone_routing:
        lines.append(_cross_zone_line(0.0, "assumed: clients name their zone and the zone router serves them "
                                           "there (nfs/s3 WAL); its pointers not priced: --from-run prices "
                                           "what a run's brokers counted", prices))  # fmt: skip
    else:
        share = (workload.zones - 1) / workload.zones
        produce = share * month_gib_written
        fetch = share * workload.mean_read * seconds / 1024
        lines.append(_cross_zone_line(produce + fetch, f"producers {produce:,.0f} + consumers {fetch:,.0f} "
                                                       f"({share:.0%} reach another zone)", prices))

    aku = sizing.akus(workload.peak_write, workload.peak_read, workload.requests_per_s, workload.partitions)
    notes.append(f"capacity: {aku.akus} AKU at the peak (1 AKU = 20 MiB/s write, 20 MiB/s read, "
                 f"800 requests/s, 1,125 partitions)")
    return Estimate(f"amq-{opts.wal}", WAL_TITLES[opts.wal], tuple(lines), tuple(notes))


def _volume_mb_s(opts: KafkaOptions, prices: PriceTable, needed_mb_s: float, instance_ebs_mb_s: float) -> float:
    gp3 = prices.gp3
    if opts.ebs_throughput == "baseline":
        wanted = gp3.baseline_mbps
    elif opts.ebs_throughput == "instance":
        # gp3 throughput is set in whole MB/s.
        wanted = math.floor(instance_ebs_mb_s)
    elif opts.ebs_throughput == "needed":
        wanted = math.ceil(needed_mb_s - 1e-9)
    else:
        wanted = float(cast(float, opts.ebs_throughput))
    return float(min(gp3.max_mbps, max(gp3.baseline_mbps, wanted)))


def kafka_brokers_needed(workload: Workload, opts: KafkaOptions, prices: PriceTable) -> sizing.BrokerNeed:
    """Network, disk bandwidth and disk capacity bounds at the peak; the largest wins."""
    inst = prices.instance(opts.instance_type)
    room = sizing.headroom(opts.over_provisioning)
    rf = opts.replication_factor
    w, r = workload.peak_write, workload.peak_read
    # Leaders receive produce and send replicas and fetches; followers receive replicas.
    egress = w * (rf - 1) + r
    ingress = w * rf
    provisioned_gib = workload.stored_gib * rf / room
    return sizing.brokers_for({
        "network": max(egress, ingress) / (sizing.network_mib_s(inst) * room),
        "disk bandwidth": w * rf / (sizing.ebs_mib_s(inst) * room),
        "disk capacity": provisioned_gib / prices.gp3.max_gib,
    }, minimum=rf)


def estimate_kafka(workload: Workload, opts: KafkaOptions, prices: PriceTable) -> Estimate:
    inst = prices.instance(opts.instance_type)
    room = sizing.headroom(opts.over_provisioning)
    rf = opts.replication_factor
    notes: list[str] = []
    need = kafka_brokers_needed(workload, opts, prices)
    if opts.instances is None:
        brokers = need.brokers
        notes.append(f"sized: {brokers} × {opts.instance_type} for the peak (bound by {need.binding}; "
                     f"{opts.over_provisioning:.0%} over-provisioning); Kafka cannot follow a daily profile "
                     f"because scaling moves data")
    else:
        brokers = opts.instances
        notes.append(f"stated: {brokers} × {opts.instance_type} (the model's sizing needs {need.brokers}, "
                     f"bound by {need.binding})")
    hours = prices.hours_per_month
    seconds = hours * SECONDS_PER_HOUR
    lines = [_compute_line(opts.instance_type, [brokers], prices)]
    lines.append(Line("wal", LINE_LABELS["wal"], "— (the log is the block storage below)", "—", 0.0, {}))
    lines.append(_none("object_storage"))
    lines.append(_none("s3_api"))

    gp3 = prices.gp3
    stored = workload.stored_gib
    provisioned = stored * rf / room
    per_volume = provisioned / brokers
    quantity = (f"{provisioned:,.0f} GiB ({provisioned / 1024:,.2f} TiB) gp3 = {stored:,.0f} GiB × {rf} replicas "
                f"/ {room:.0%} used; {brokers} volumes of {per_volume:,.0f} GiB")
    lines.append(Line("block_storage", LINE_LABELS["block_storage"], quantity,
                      f"{_money(gp3.usd_per_gib_month)}/GiB-month", provisioned * gp3.usd_per_gib_month,
                      {"gib": provisioned, "tib": provisioned / 1024, "volumes": brokers}))
    if per_volume > gp3.max_gib:
        notes.append(f"{per_volume:,.0f} GiB per broker exceeds one gp3 volume ({gp3.max_gib:,.0f} GiB): "
                     f"each broker needs several volumes")

    needed_mb_s = mib_s_to_mb_s(workload.peak_write * rf / brokers) / room
    volume_mb_s = _volume_mb_s(opts, prices, needed_mb_s, inst.ebs_mbps)
    extra = volume_mb_s - gp3.baseline_mbps
    if extra > 0:
        lines.append(Line("block_throughput", LINE_LABELS["block_throughput"],
                          f"{extra:g} MB/s × {brokers} volumes (each {volume_mb_s:g} MB/s; "
                          f"{gp3.baseline_mbps:g} MB/s free)",
                          f"{_money(gp3.usd_per_mbps_month)}/MB/s-month", extra * brokers * gp3.usd_per_mbps_month,
                          {"extra_mbps_each": extra, "volumes": brokers}))
    else:
        lines.append(Line("block_throughput", LINE_LABELS["block_throughput"],
                          f"0 MB/s above the free {gp3.baseline_mbps:g} MB/s", "—", 0.0,
                          {"extra_mbps_each": 0.0, "volumes": brokers}))
    if mb_s_to_mib_s(volume_mb_s) * room < workload.peak_write * rf / brokers - 1e-9:
        notes.append(f"volumes at {volume_mb_s:g} MB/s are below the {needed_mb_s:,.0f} MB/s the peak writes need")

    z = workload.zones
    if z == 1:
        lines.append(_cross_zone_line(0.0, "one zone", prices))
    else:
        month_gib = workload.mean_write * seconds / 1024
        share = (z - 1) / z
        replication = min(rf - 1, z - 1) * month_gib
        produce = share * month_gib
        fetch = 0.0 if opts.rack_aware_fetch else share * workload.mean_read * seconds / 1024
        parts = (f"replication {replication:,.0f} + producers {produce:,.0f} + consumers {fetch:,.0f}"
                 + (" (rack-aware fetch)" if opts.rack_aware_fetch else f" ({share:.0%} of clients cross)"))
        lines.append(_cross_zone_line(replication + produce + fetch, parts, prices))
    return Estimate("kafka", f"Apache Kafka, RF {rf}", tuple(lines), tuple(notes))


def compare(workload: Workload, amq: Sequence[AmqOptions], kafka: KafkaOptions, prices: PriceTable,
            measured: Measured | None = None, notes: Sequence[str] = ()) -> Comparison:
    _check(len(amq) > 0, "nothing to compare: no amq WAL kind chosen")
    return Comparison(
        workload=workload,
        pricing=prices.name,
        amq=tuple(estimate_amq(workload, opts, prices, measured) for opts in amq),
        kafka=estimate_kafka(workload, kafka, prices),
        notes=tuple(notes),
    )


def to_dict(comparison: Comparison) -> dict[str, Any]:
    """A JSON-ready view: every line with its quantity, price and amounts."""

    def est(e: Estimate) -> dict[str, Any]:
        out: dict[str, Any] = {
            "system": e.system,
            "title": e.title,
            "lines": [{"key": ln.key, "label": ln.label, "quantity": ln.quantity, "price": ln.price,
                       "usd_per_month": round(ln.usd, 2), "amounts": dict(ln.amounts)} for ln in e.lines],
            "total_usd_per_month": round(e.total, 2),
            "notes": list(e.notes),
        }
        if e.system != "kafka":
            s = comparison.saving(e)
            out["saving_vs_kafka"] = {"usd_per_month": round(s.usd, 2), "percent": round(s.percent, 2),
                                      "kafka_cost_ratio": None if math.isinf(s.ratio) else round(s.ratio, 3)}
        return out

    w = comparison.workload
    return {
        "pricing": comparison.pricing,
        "workload": {
            "write_mib_s_peak": w.peak_write,
            "write_mib_s_mean": w.mean_write,
            "read_mib_s_peak": w.peak_read,
            "read_fanout": w.read_fanout,
            "retention_hours": w.retention_hours,
            "zones": w.zones,
            "profile_mib_s": list(w.profile) if w.profile is not None else None,
            "stored_gib": w.stored_gib,
        },
        "systems": [est(e) for e in comparison.amq] + [est(comparison.kafka)],
        "notes": list(comparison.notes),
    }
