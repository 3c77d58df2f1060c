"""The Kafka APIs amq speaks, with the version ranges it advertises in ApiVersions.

The ranges mirror what Apache Kafka 2.8 advertises (so kafka-python infers
broker version 2.8 from them), raised to Kafka 4.0's minimums where 4.0 dropped
old versions, plus ApiVersions v4 and DescribeCluster v1. Fetch stops at 12 and
Produce at 9: later versions identify topics by topic ID only. See
docs/protocol.md for why each bound is where it is.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum


class ApiKey(IntEnum):
    PRODUCE = 0
    FETCH = 1
    LIST_OFFSETS = 2
    METADATA = 3
    OFFSET_COMMIT = 8
    OFFSET_FETCH = 9
    FIND_COORDINATOR = 10
    JOIN_GROUP = 11
    HEARTBEAT = 12
    LEAVE_GROUP = 13
    SYNC_GROUP = 14
    DESCRIBE_GROUPS = 15
    LIST_GROUPS = 16
    SASL_HANDSHAKE = 17
    API_VERSIONS = 18
    CREATE_TOPICS = 19
    DELETE_TOPICS = 20
    DELETE_RECORDS = 21
    INIT_PRODUCER_ID = 22
    OFFSET_FOR_LEADER_EPOCH = 23
    DESCRIBE_CONFIGS = 32
    ALTER_CONFIGS = 33
    CREATE_PARTITIONS = 37
    DELETE_GROUPS = 42
    INCREMENTAL_ALTER_CONFIGS = 44
    ALTER_PARTITION_REASSIGNMENTS = 45
    LIST_PARTITION_REASSIGNMENTS = 46
    DESCRIBE_CLUSTER = 60


@dataclass(frozen=True, slots=True)
class ApiSpec:
    key: ApiKey
    name: str  # schema base name: "Produce" -> ProduceRequest / ProduceResponse
    min_version: int
    max_version: int
    first_flexible: int | None  # first version using compact encodings and header v2/v1; None if none

    def is_flexible(self, version: int) -> bool:
        return self.first_flexible is not None and version >= self.first_flexible

    def supports(self, version: int) -> bool:
        return self.min_version <= version <= self.max_version


_SPECS = (
    # Produce v0-2 are advertised because librdkafka refuses a broker whose Produce min is
    # above 0 (KAFKA-18659); they decode fine, and the magic 0/1 records they carry are
    # rejected by the broker.
    ApiSpec(ApiKey.PRODUCE, "Produce", 0, 9, 9),
    # Fetch v0-3 can only carry magic 0/1 message sets, which amq never stores.
    ApiSpec(ApiKey.FETCH, "Fetch", 4, 12, 12),
    ApiSpec(ApiKey.LIST_OFFSETS, "ListOffsets", 1, 6, 6),
    ApiSpec(ApiKey.METADATA, "Metadata", 0, 11, 9),
    ApiSpec(ApiKey.OFFSET_COMMIT, "OffsetCommit", 2, 8, 8),
    ApiSpec(ApiKey.OFFSET_FETCH, "OffsetFetch", 1, 7, 6),
    ApiSpec(ApiKey.FIND_COORDINATOR, "FindCoordinator", 0, 3, 3),
    ApiSpec(ApiKey.JOIN_GROUP, "JoinGroup", 0, 7, 6),
    ApiSpec(ApiKey.HEARTBEAT, "Heartbeat", 0, 4, 4),
    ApiSpec(ApiKey.LEAVE_GROUP, "LeaveGroup", 0, 4, 4),
    ApiSpec(ApiKey.SYNC_GROUP, "SyncGroup", 0, 5, 4),
    ApiSpec(ApiKey.DESCRIBE_GROUPS, "DescribeGroups", 0, 5, 5),
    ApiSpec(ApiKey.LIST_GROUPS, "ListGroups", 0, 4, 3),
    ApiSpec(ApiKey.API_VERSIONS, "ApiVersions", 0, 4, 3),
    ApiSpec(ApiKey.CREATE_TOPICS, "CreateTopics", 2, 7, 5),
    ApiSpec(ApiKey.DELETE_TOPICS, "DeleteTopics", 1, 6, 4),
    ApiSpec(ApiKey.DELETE_RECORDS, "DeleteRecords", 0, 2, 2),
    ApiSpec(ApiKey.INIT_PRODUCER_ID, "InitProducerId", 0, 4, 2),
    ApiSpec(ApiKey.OFFSET_FOR_LEADER_EPOCH, "OffsetForLeaderEpoch", 2, 4, 4),
    ApiSpec(ApiKey.DESCRIBE_CONFIGS, "DescribeConfigs", 1, 4, 4),
    ApiSpec(ApiKey.ALTER_CONFIGS, "AlterConfigs", 0, 2, 2),
    ApiSpec(ApiKey.CREATE_PARTITIONS, "CreatePartitions", 0, 3, 2),
    ApiSpec(ApiKey.DELETE_GROUPS, "DeleteGroups", 0, 2, 2),
    ApiSpec(ApiKey.INCREMENTAL_ALTER_CONFIGS, "IncrementalAlterConfigs", 0, 1, 1),
    ApiSpec(ApiKey.ALTER_PARTITION_REASSIGNMENTS, "AlterPartitionReassignments", 0, 0, 0),
    ApiSpec(ApiKey.LIST_PARTITION_REASSIGNMENTS, "ListPartitionReassignments", 0, 0, 0),
    ApiSpec(ApiKey.DESCRIBE_CLUSTER, "DescribeCluster", 0, 1, 0),
)

#: Every API amq implements, by key; the ApiVersions response is built from this.
SUPPORTED_APIS: dict[int, ApiSpec] = {s.key: s for s in _SPECS}


def request_header_version(api_key: int, api_version: int) -> int:
    """Request header version Kafka uses for (api, version): 2 when flexible, else 1.

    Header v0 (no client_id) only exists for ControlledShutdown v0, which amq does not serve.
    """
    spec = SUPPORTED_APIS.get(api_key)
    if spec is not None and spec.is_flexible(api_version):
        return 2
    return 1


def response_header_version(api_key: int, api_version: int) -> int:
    """Response header version: 1 (with tagged fields) when flexible, else 0.

    ApiVersions responses always use v0, so a client that does not yet know the broker's
    versions can read the reply whatever version it asked with.
    """
    if api_key == ApiKey.API_VERSIONS:
        return 0
    spec = SUPPORTED_APIS.get(api_key)
    if spec is not None and spec.is_flexible(api_version):
        return 1
    return 0
