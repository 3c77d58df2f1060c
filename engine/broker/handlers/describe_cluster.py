"""DescribeCluster: the brokers, with this broker standing in for the controller (as KRaft brokers do)."""

from __future__ import annotations

from engine.broker.context import RequestContext
from engine.protocol import ApiKey, ErrorCode
from engine.protocol.messages import DescribeClusterRequest, DescribeClusterResponse

API_KEY = ApiKey.DESCRIBE_CLUSTER


async def handle(ctx: RequestContext, request: DescribeClusterRequest) -> DescribeClusterResponse:
    b = ctx.broker
    if request.endpoint_type != 1:
        return DescribeClusterResponse(
            error_code=ErrorCode.UNSUPPORTED_ENDPOINT_TYPE,
            error_message="amq brokers describe brokers only (endpoint type 1)",
            endpoint_type=request.endpoint_type,
            cluster_id=b.image.cluster_id,
        )
    return DescribeClusterResponse(
        cluster_id=b.image.cluster_id,
        controller_id=b.node_id,
        brokers=[
            DescribeClusterResponse.DescribeClusterBroker(x.id, x.host, x.port, x.zone or None)
            for x in b.live_brokers()
        ],
        cluster_authorized_operations=-2147483648,
    )
