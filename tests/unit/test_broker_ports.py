"""The real Broker is what its handlers and its group coordinator are typed against (engine/broker/ports.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from engine.broker.broker import Broker
from engine.broker.config import BrokerConfig
from engine.broker.ports import CoordinatorHost, HandlerBroker

ROOT = Path(__file__).resolve().parents[2]


def as_handler_broker(b: Broker) -> HandlerBroker:
    return b  # mypy checks this structurally (test_the_types_line_up)


def as_coordinator_host(b: Broker) -> CoordinatorHost:
    return b


def test_a_broker_has_every_member_of_both_protocols() -> None:
    b = Broker(BrokerConfig())
    assert isinstance(as_handler_broker(b), HandlerBroker)
    assert isinstance(as_coordinator_host(b), CoordinatorHost)


def test_the_types_line_up() -> None:
    """mypy on this file: Broker is assignable to both protocols (errors elsewhere are not this test's)."""
    res = subprocess.run(
        [sys.executable, "-m", "mypy", "--follow-imports=silent", "--ignore-missing-imports",
         "--no-error-summary", __file__],
        cwd=ROOT, capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert res.returncode == 0, res.stdout + res.stderr
