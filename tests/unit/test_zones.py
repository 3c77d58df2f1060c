"""A client's zone from client.id markers and client.rack; the ledger's counts and Prometheus text."""

from __future__ import annotations

import logging

import pytest

from engine.broker.zones import UNKNOWN, ZoneLedger, ZoneResolver, prometheus, zone_marker


@pytest.mark.parametrize(
    ("client_id", "zone"),
    [
        ("automq_az=az1", "az1"),
        ("app1&automq_az=az2", "az2"),
        ("app1&automq_az=az2&x=1", "az2"),
        ("svc,diskless_az=eu-west-1b", "eu-west-1b"),
        ("AUTOMQ_AZ=az3", "az3"),
        ("orders-service automq_az=az1", "az1"),
        ("app?automq_az=az1", "az1"),
        ("myautomq_az=az1", None),  # not a marker: part of a longer key
        ("automq_az=", None),
        ("rdkafka", None),
        ("", None),
        (None, None),
    ],
)
def test_markers(client_id: str | None, zone: str | None) -> None:
    assert zone_marker(client_id) == zone


def test_resolution_order_case_and_unknown_zones(caplog: pytest.LogCaptureFixture) -> None:
    r = ZoneResolver(lambda: {"az1", "az2", "az3"})
    assert r.client_zone("a&automq_az=az2", rack="az3") == "az2"  # the marker wins over the rack
    assert r.client_zone("consumer", rack="az3") == "az3"
    assert r.client_zone("a&automq_az=AZ1") == "az1"  # a zone name in another case is that zone
    with caplog.at_level(logging.INFO, logger="engine.broker.zones"):
        assert r.client_zone("b&automq_az=mars", rack="az1") == "az1"  # unknown: ignored, the rack decides
        assert r.client_zone("c&automq_az=mars") == UNKNOWN
    assert sum("mars" in m for m in caplog.messages) == 1  # one log line per unknown name
    assert r.client_zone("plain") == UNKNOWN
    assert ZoneResolver(lambda: {"az1"}).client_zone("plain") == "az1"  # one zone: every client is in it


def test_ledger_counts_cross_zone_client_bytes_only() -> None:
    ledger = ZoneLedger()
    ledger.add("az1", "az1", "client", 100)
    ledger.add("az1", "az2", "client", 30)
    ledger.add(UNKNOWN, "az2", "client", 50)
    ledger.add("az1", "s3", "storage", 1000)
    ledger.add("az2", "az1", "client", 0)
    assert ledger.cross_zone_bytes() == 30
    assert len(ledger.rows()) == 4
    text = prometheus(ledger.rows(), {"broker_id": 1, "zone": "az1", "produce_bytes": 130})
    assert 'amq_zone_traffic_bytes_total{src="az1",dst="az2",kind="client"} 30' in text
    assert 'amq_produce_bytes{broker="1",zone="az1"} 130' in text
