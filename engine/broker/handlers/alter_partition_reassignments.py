"""AlterPartitionReassignments: move partitions to other brokers by metadata (docs/reassign.md).

amq keeps one copy of a partition, in shared storage, so a replica list names exactly one
broker: the new leader. A null list cancels a move that the old leader has not released
yet. The request is applied whole or not at all, so a plan with one bad entry moves nothing.
"""

from __future__ import annotations

from engine.broker.context import RequestContext
from engine.broker.errors import BrokerError
from engine.protocol import ApiKey, ErrorCode
from engine.protocol.messages import AlterPartitionReassignmentsRequest, AlterPartitionReassignmentsResponse

API_KEY = ApiKey.ALTER_PARTITION_REASSIGNMENTS
Topic = AlterPartitionReassignmentsResponse.ReassignableTopicResponse
Result = AlterPartitionReassignmentsResponse.ReassignablePartitionResponse


def _target(replicas: list[int] | None) -> tuple[int, str | None]:
    if replicas is None:
        return -1, None
    if len(replicas) != 1:
        return -1, (f"amq keeps one copy of each partition, in shared storage: name exactly one broker, got {replicas}")
    return replicas[0], None


async def handle(
    ctx: RequestContext, request: AlterPartitionReassignmentsRequest
) -> AlterPartitionReassignmentsResponse:
    moves: list[tuple[str, int, int]] = []
    refused: dict[tuple[str, int], str] = {}
    for t in request.topics:
        for p in t.partitions:
            target, problem = _target(p.replicas)
            if problem is not None:
                refused[(t.name, p.partition_index)] = problem
            moves.append((t.name, p.partition_index, target))
    answers: dict[tuple[str, int], tuple[int, str | None]] = {}
    if refused:
        for topic, index, _ in moves:
            problem = refused.get((topic, index))
            answers[(topic, index)] = (
                (int(ErrorCode.INVALID_REPLICA_ASSIGNMENT), problem)
                if problem
                else (int(ErrorCode.INVALID_REQUEST), "not started: another partition in the request was refused")
            )
    elif moves:
        try:
            res = await ctx.broker.controller_call("reassign", moves=[list(m) for m in moves])
        except BrokerError as e:
            return AlterPartitionReassignmentsResponse(error_code=int(e.error_code), error_message=str(e))
        for topic, index, code, message in res["results"]:
            answers[(topic, index)] = (int(ErrorCode[code]), message) if code else (0, None)
    out = AlterPartitionReassignmentsResponse()
    for t in request.topics:
        tr = Topic(name=t.name)
        out.responses.append(tr)
        for p in t.partitions:
            code, message = answers.get((t.name, p.partition_index), (0, None))
            tr.partitions.append(Result(partition_index=p.partition_index, error_code=code, error_message=message))
    return out
