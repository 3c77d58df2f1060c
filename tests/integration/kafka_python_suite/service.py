"""Stand-in for kafka-python's `test/service.py`, which its sdist does not ship.

Copied into the unpacked sdist as `test/service.py` by test_kafka_python_suite.py.
With KAFKA_URI set, the fixtures only use `ExternalService` (a broker someone else runs).
"""

from __future__ import annotations


class ExternalService:
    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port

    def open(self) -> None:
        pass

    def close(self) -> None:
        pass


class SpawnedService:
    """Spawning a Kafka or ZooKeeper process is never wanted here: the broker is the amq cluster."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        raise RuntimeError("kafka-python suite runs against an external broker (KAFKA_URI); nothing is spawned")
