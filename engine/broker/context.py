"""What a handler gets besides its request: the broker (as ``HandlerBroker``), and who is asking."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from engine.broker.ports import HandlerBroker


@dataclass(slots=True)
class RequestContext:
    broker: HandlerBroker
    api_version: int
    correlation_id: int
    client_id: str | None
    client_host: str
