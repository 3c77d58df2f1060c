"""InitProducerId: a fresh producer id for an idempotent producer (no transactions yet)."""

from __future__ import annotations

import logging

from engine.broker.context import RequestContext
from engine.broker.errors import BrokerError
from engine.protocol import ApiKey, ErrorCode
from engine.protocol.messages import InitProducerIdRequest, InitProducerIdResponse

API_KEY = ApiKey.INIT_PRODUCER_ID
log = logging.getLogger(__name__)


async def handle(ctx: RequestContext, request: InitProducerIdRequest) -> InitProducerIdResponse:
    if request.transactional_id is not None:
        log.info("%s asked for transactional id %r: transactions are not supported", ctx.client_id,
                 request.transactional_id)  # fmt: skip
        return InitProducerIdResponse(error_code=ErrorCode.TRANSACTIONAL_ID_AUTHORIZATION_FAILED)
    # Like Kafka for non-transactional producers: always a new id, whatever id/epoch the client had.
    try:
        pid = await ctx.broker.next_producer_id()
    except BrokerError as e:
        return InitProducerIdResponse(error_code=e.error_code)
    return InitProducerIdResponse(error_code=0, producer_id=pid, producer_epoch=0)
