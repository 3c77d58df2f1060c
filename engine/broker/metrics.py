"""GET /metrics: the broker's counters as one JSON object (docs/perf.md), or in Prometheus' text
format for a scraper (it asks for text/plain or OpenMetrics) and at /metrics/prometheus.

Besides the flat counters, the JSON has `zone_traffic` (a list), `latency` and `sizes` (objects
of histogram summaries, engine/broker/latency.py); the Prometheus text has the histograms whole."""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import TYPE_CHECKING

from engine.broker import latency
from engine.broker.zones import prometheus

if TYPE_CHECKING:
    from engine.broker.broker import Broker

_PATHS = ("/metrics", "/metrics.json")
_PROMETHEUS = "/metrics/prometheus"


async def start_metrics_server(broker: Broker, host: str, port: int) -> tuple[asyncio.Server, int]:
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        kind = "application/json"
        try:
            line = await asyncio.wait_for(reader.readline(), 5)
            accept = ""
            while (header := await asyncio.wait_for(reader.readline(), 5)) not in (b"\r\n", b"\n", b""):
                name, _, value = header.decode("latin-1").partition(":")
                if name.strip().lower() == "accept":
                    accept = value.lower()
            parts = line.decode("latin-1").split()
            path = parts[1].split("?")[0] if len(parts) >= 2 else ""
            if len(parts) < 2 or parts[0] != "GET":
                status, body = "405 Method Not Allowed", b'{"error": "GET only"}'
            elif path not in (*_PATHS, _PROMETHEUS):
                status, body = "404 Not Found", b'{"error": "try /metrics"}'
            elif path == _PROMETHEUS or (path == "/metrics" and ("openmetrics" in accept or "text/plain" in accept)):
                kind = "text/plain; version=0.0.4"
                text = prometheus(broker.zone_traffic(), broker.metrics())
                text += latency.prometheus(latency.series(broker), broker.node_id, broker.config.zone)
                status, body = "200 OK", text.encode()
            else:
                histograms = latency.json_objects(latency.series(broker))
                status, body = (
                    "200 OK",
                    json.dumps({**broker.metrics(), "zone_traffic": broker.zone_traffic(), **histograms}).encode(),
                )
            writer.write(
                f"HTTP/1.1 {status}\r\nContent-Type: {kind}\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
                + body
            )
            await writer.drain()
        except (TimeoutError, ConnectionError, UnicodeDecodeError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    server = await asyncio.start_server(serve, host, port)
    return server, int(server.sockets[0].getsockname()[1])
