"""Errors handlers answer with, and how storage errors map to Kafka's codes."""

from __future__ import annotations

from engine.protocol.errors import ErrorCode
from engine.storage.errors import FencedError, OffsetOutOfRange, StorageError, StreamClosed
from engine.storage.objects.store import ObjectStoreError


class BrokerError(Exception):
    """A request that fails with a Kafka error code (answered, not a crash)."""

    def __init__(self, error_code: ErrorCode, message: str = "") -> None:
        super().__init__(message or error_code.name)
        self.error_code = error_code


#: What a handler answers with an error code instead of failing the request: refusals, and storage
#: trouble (S3 failing while a partition opens or a read fetches objects is transient).
ANSWERED = (BrokerError, StorageError, ObjectStoreError)


def error_code_for(exc: BaseException) -> ErrorCode:
    if isinstance(exc, BrokerError):
        return exc.error_code
    if isinstance(exc, OffsetOutOfRange):
        return ErrorCode.OFFSET_OUT_OF_RANGE
    if isinstance(exc, (FencedError, StreamClosed)):
        # Another leader (or a newer incarnation) owns the partition now: the client refreshes metadata.
        return ErrorCode.NOT_LEADER_OR_FOLLOWER
    if isinstance(exc, (StorageError, ObjectStoreError)):
        # S3 failing (an outage; a partition opened then reads its objects) is transient: a
        # retriable code, so an idempotent producer retries instead of failing its records
        # (UNKNOWN_SERVER_ERROR made librdkafka give up; found by `amq chaos trials`).
        return ErrorCode.KAFKA_STORAGE_ERROR
    if isinstance(exc, TimeoutError):
        return ErrorCode.REQUEST_TIMED_OUT
    return ErrorCode.UNKNOWN_SERVER_ERROR
