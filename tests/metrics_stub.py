"""A stand-in for a broker's metrics endpoint, for tests of `amq perf`'s cluster block."""

from __future__ import annotations

import contextlib
import http.server
import json
import threading
from collections.abc import Iterator
from typing import Any


@contextlib.contextmanager
def growing_counters(step: dict[str, int], fixed: dict[str, Any] | None = None) -> Iterator[str]:
    """Serve JSON counters that grow by `step` on every GET (n-th GET: step * n); yields the URL."""
    hits = {"n": 0}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            hits["n"] += 1
            body = json.dumps({**{k: v * hits["n"] for k, v in step.items()}, **(fixed or {})}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/metrics.json"
    finally:
        server.shutdown()
        server.server_close()
