"""ListPartitionReassignments: the moves under way, as Kafka shows them (adding = the target).

A move lasts from the request until the old leader has released the partition (typically
tens of milliseconds), so this list is usually empty; `amq reassign --timeline` shows the
history of finished moves.
"""

from __future__ import annotations

from engine.broker.context import RequestContext
from engine.protocol import ApiKey
from engine.protocol.messages import ListPartitionReassignmentsRequest, ListPartitionReassignmentsResponse

API_KEY = ApiKey.LIST_PARTITION_REASSIGNMENTS
Topic = ListPartitionReassignmentsResponse.OngoingTopicReassignment
Ongoing = ListPartitionReassignmentsResponse.OngoingPartitionReassignment


async def handle(ctx: RequestContext, request: ListPartitionReassignmentsRequest) -> ListPartitionReassignmentsResponse:
    image = ctx.broker.image
    wanted: dict[str, set[int] | None]
    if request.topics is None:
        wanted = dict.fromkeys(image.topics)
    else:
        wanted = {t.name: set(t.partition_indexes) for t in request.topics}
    out = ListPartitionReassignmentsResponse()
    for name, indexes in wanted.items():
        topic = image.topics.get(name)
        if topic is None:
            continue
        moving = [
            Ongoing(partition_index=p.index, replicas=[p.leader, p.target], adding_replicas=[p.target],
                    removing_replicas=[p.leader])
            for p in topic.partitions
            if p.target >= 0 and (indexes is None or p.index in indexes)
        ]  # fmt: skip
        if moving:
            out.topics.append(Topic(name=name, partitions=moving))
    return out
