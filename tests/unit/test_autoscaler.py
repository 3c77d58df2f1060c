"""The autoscaler's rule, with made-up loads: out above the target for a while, in well below, never flapping."""

from __future__ import annotations

import pytest

from automq_cli.autoscaler import Decider, Policy, parse_range


def test_scales_out_only_after_the_load_stayed_above_the_target() -> None:
    d = Decider(Policy(1, 4, target_mibps=10, interval_s=5))
    assert d.decide(0, 2, 30) is None  # 15 per broker: above, but only just now
    assert d.decide(10, 2, 30) is None
    kind, why = d.decide(15, 2, 30) or ("", "")
    assert kind == "out" and "above the target" in why
    d.last_action = 15
    assert d.decide(20, 3, 45) is None  # cooling down after the action
    assert d.decide(40, 4, 80) is None  # at the maximum


def test_a_short_spike_or_a_dip_does_nothing() -> None:
    d = Decider(Policy(1, 4, target_mibps=10, interval_s=5))
    assert d.decide(0, 2, 30) is None
    assert d.decide(10, 2, 10) is None  # back under: the clock starts again
    assert d.decide(20, 2, 30) is None
    assert d.decide(30, 2, 30) is None
    assert d.decide(35, 2, 30) is not None


def test_scales_in_when_the_load_fits_on_one_broker_fewer() -> None:
    d = Decider(Policy(1, 4, target_mibps=10, interval_s=5))
    assert d.decide(0, 3, 10) is None  # 10 MiB/s would be 5 per broker on 2: under 60 % of 10
    assert d.decide(29, 3, 10) is None
    kind, why = d.decide(30, 3, 10) or ("", "")
    assert kind == "in" and "would be 5.0 per broker on 2" in why
    assert Decider(Policy(2, 4, target_mibps=10)).decide(100, 2, 0) is None  # at the minimum


def test_the_range_is_checked() -> None:
    assert parse_range("1:4") == (1, 4)
    for bad in ("4:1", "0:2", "x", "1-4", "1:40"):
        with pytest.raises(ValueError):
            parse_range(bad)
