"""Metadata: brokers, and topics with their partitions' leaders; auto-creates topics when allowed."""

from __future__ import annotations

from engine.broker.context import RequestContext
from engine.broker.errors import BrokerError
from engine.broker.image import TopicInfo
from engine.broker.router import Router
from engine.broker.zones import UNKNOWN, wants_real_leaders
from engine.controller.configs import ConfigError, validate_topic_name
from engine.protocol import ApiKey, ErrorCode
from engine.protocol.messages import MetadataRequest, MetadataResponse

API_KEY = ApiKey.METADATA
_NO_OPS = -2147483648


def _topic(t: TopicInfo, live: set[int], router: Router, zone: str | None) -> MetadataResponse.MetadataResponseTopic:
    parts = []
    for p in t.partitions:
        ok = p.leader in live
        # The zone router shows a broker of the client's zone as the leader of a partition led
        # elsewhere (its zone proxy); Fetch and Produce reach the real leader through it.
        shown = router.metadata_leader(t.name, p.index, p.leader, zone) if ok and zone else p.leader
        parts.append(
            MetadataResponse.MetadataResponsePartition(
                error_code=0 if ok else ErrorCode.LEADER_NOT_AVAILABLE,
                partition_index=p.index,
                leader_id=shown if ok else -1,
                leader_epoch=p.leader_epoch,
                # One copy of the data (WAL, then S3): the leader is the only replica.
                replica_nodes=[shown],
                isr_nodes=[shown] if ok else [],
                offline_replicas=[] if ok else [p.leader],
            )
        )
    return MetadataResponse.MetadataResponseTopic(
        error_code=0, name=t.name, topic_id=t.id, is_internal=t.internal, partitions=parts,
        topic_authorized_operations=_NO_OPS,
    )  # fmt: skip


async def handle(ctx: RequestContext, request: MetadataRequest) -> MetadataResponse:
    b = ctx.broker
    v = ctx.api_version
    brokers = b.listed_brokers()
    live = {x.id for x in b.live_brokers()}
    # The client's zone as named in its client.id; else, the zone of the broker it asked.
    zone: str | None = b.zones.client_zone(ctx.client_id)
    if zone == UNKNOWN:
        zone = b.zone
    if wants_real_leaders(ctx.client_id):
        zone = None
    topics: list[MetadataResponse.MetadataResponseTopic] = []
    if request.topics is None or (v == 0 and not request.topics):
        topics = [_topic(t, live, b.router, zone) for t in b.image.topics.values() if not t.internal]
    else:
        allow_auto = request.allow_auto_topic_creation if v >= 4 else True
        names: list[str] = []
        for rt in request.topics:
            if rt.name is None:
                t = b.image.topics_by_id.get(rt.topic_id)
                if t is None:
                    topics.append(MetadataResponse.MetadataResponseTopic(
                        error_code=ErrorCode.UNKNOWN_TOPIC_ID, name="", topic_id=rt.topic_id))  # fmt: skip
                    continue
                names.append(t.name)
            else:
                names.append(rt.name)
        missing: dict[str, ErrorCode] = {}
        to_create = []
        for name in dict.fromkeys(names):
            if name in b.image.topics:
                continue
            try:
                validate_topic_name(name)
            except ConfigError as e:
                missing[name] = e.code
                continue
            if allow_auto:
                to_create.append(name)
            else:
                missing[name] = ErrorCode.UNKNOWN_TOPIC_OR_PARTITION
        if to_create:
            try:
                missing.update(await b.auto_create_topics(to_create))
            except BrokerError:
                missing.update({n: ErrorCode.LEADER_NOT_AVAILABLE for n in to_create})
        for name in dict.fromkeys(names):
            t = b.image.topics.get(name)
            code = missing.get(name, ErrorCode.NONE)
            if t is not None and code == ErrorCode.NONE:
                topics.append(_topic(t, live, b.router, zone))
            else:
                if code == ErrorCode.NONE:
                    code = ErrorCode.LEADER_NOT_AVAILABLE  # created, but not in this broker's image yet
                topics.append(MetadataResponse.MetadataResponseTopic(error_code=code, name=name))
    return MetadataResponse(
        brokers=[MetadataResponse.MetadataResponseBroker(x.id, x.host, x.port, x.zone or None) for x in brokers],
        cluster_id=b.image.cluster_id or None,
        controller_id=b.node_id,
        topics=topics,
        cluster_authorized_operations=_NO_OPS,
    )
