"""What the broker's parts may use of it: one narrow protocol per kind of user.

Handlers see a ``HandlerBroker`` (``RequestContext.broker``), the group coordinator a
``CoordinatorHost``. ``engine.broker.broker.Broker`` satisfies both structurally (nothing here
is a base class; tests/unit/test_broker_ports.py checks it); test doubles implement just what
the code under test calls. A member a handler starts to use is added here first.

Attributes are read-only properties so that an implementation may hold a subtype.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    from engine.broker.config import BrokerConfig
    from engine.broker.groups.coordinator import GroupCoordinator
    from engine.broker.groups.store import StreamLike
    from engine.broker.image import MetadataImage, TopicInfo
    from engine.broker.latency import BrokerLatency
    from engine.broker.partition import Partition
    from engine.protocol import ErrorCode
    from engine.protocol.messages import ApiVersionsResponse


class BrokerEndpoint(Protocol):
    """A broker as Metadata and DescribeCluster list it."""

    @property
    def id(self) -> int: ...
    @property
    def zone(self) -> str: ...
    @property
    def host(self) -> str: ...
    @property
    def port(self) -> int: ...


class ApiCatalog(Protocol):
    """The dispatcher, as ApiVersions sees it."""

    def api_versions(self) -> list[ApiVersionsResponse.ApiVersion]: ...


@runtime_checkable
class HandlerBroker(Protocol):
    """What a request handler (engine/broker/handlers/*.py) may use of the broker."""

    @property
    def node_id(self) -> int: ...
    @property
    def host(self) -> str: ...
    @property
    def port(self) -> int:
        """The bound port (also when configured as 0)."""
        ...

    @property
    def config(self) -> BrokerConfig: ...
    @property
    def image(self) -> MetadataImage: ...
    @property
    def groups(self) -> GroupCoordinator | None:
        """None when the group coordinator did not start: group APIs answer COORDINATOR_NOT_AVAILABLE."""
        ...

    @property
    def dispatcher(self) -> ApiCatalog: ...
    @property
    def counters(self) -> Counter[str]:
        """Metrics counters (``counters["produce_bytes"] += n``)."""
        ...

    @property
    def latency(self) -> BrokerLatency:
        """Latency histograms (``latency.fetched(...)``; docs/perf.md)."""
        ...

    def topic(self, name: str) -> TopicInfo | None: ...

    async def partition(self, topic_name: str, index: int) -> Partition:
        """The open partition led here, or BrokerError with the Kafka code that explains why not."""
        ...

    def live_brokers(self) -> Sequence[BrokerEndpoint]:
        """The brokers clients may use, this one always."""
        ...

    def listed_brokers(self) -> Sequence[BrokerEndpoint]:
        """What Metadata lists: the live brokers, and for a while those that left."""
        ...

    async def auto_create_topics(self, names: list[str]) -> dict[str, ErrorCode]: ...

    def coordinator_for(self, key: str) -> tuple[int, str, int]:
        """(node_id, host, port) of the coordinator of a group key."""
        ...

    async def next_producer_id(self) -> int: ...

    def count_client_bytes(self, client_id: str | None, rack: str | None, n: int, to_broker: bool) -> None:
        """Count Kafka data between a client and this broker in the zone ledger."""
        ...

    async def controller_call(self, method: str, **params: Any) -> Any:
        """A controller RPC whose metadata change is visible here when it returns; BrokerError if unreachable."""
        ...


class OffsetsTopicSettings(Protocol):
    @property
    def offsets_topic_num_partitions(self) -> int: ...


@runtime_checkable
class CoordinatorHost(Protocol):
    """What the group coordinator (engine/broker/groups) uses of the broker it runs in."""

    @property
    def node_id(self) -> int: ...
    @property
    def config(self) -> OffsetsTopicSettings: ...

    def topic(self, name: str) -> object | None:
        """Whether a topic exists (not None): the coordinator asks only about __consumer_offsets."""
        ...

    async def open_internal_stream(self, topic: str, partition: int) -> StreamLike:
        """The stream of an internal topic's partition led here, at its leader epoch (creates the topic)."""
        ...

    def offsets_partition_for(self, key: str) -> int:
        """The __consumer_offsets partition of a group key (the placement coordinator_for uses)."""
        ...

    def coordinator_for(self, key: str) -> tuple[int, str, int]:
        """(node_id, host, port) of the broker leading ``offsets_partition_for(key)``."""
        ...
