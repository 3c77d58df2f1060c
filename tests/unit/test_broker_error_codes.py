"""How failures map to Kafka error codes: transient storage failures must be retriable."""

from __future__ import annotations

from engine.broker.errors import BrokerError, error_code_for
from engine.protocol.errors import ErrorCode
from engine.storage.errors import FencedError, StorageError, StreamClosed
from engine.storage.objects.store import ObjectStoreError


def test_an_s3_failure_is_a_retriable_storage_error() -> None:
    """Found by `amq chaos trials --wal nfs --seed 1503` (trial 66, S3 down for 3.3 s right after a
    broker restart): a leader opening a partition read its objects from S3, the GET failed, and
    the relayed producers got UNKNOWN_SERVER_ERROR, which librdkafka does not retry: 392 records
    failed although S3 came back within seconds."""
    e = ObjectStoreError("s3 GET objects/000000001916 failed: error sending request")
    assert error_code_for(e) == ErrorCode.KAFKA_STORAGE_ERROR


def test_other_mappings() -> None:
    assert error_code_for(BrokerError(ErrorCode.MESSAGE_TOO_LARGE)) == ErrorCode.MESSAGE_TOO_LARGE
    assert error_code_for(FencedError("x")) == ErrorCode.NOT_LEADER_OR_FOLLOWER
    assert error_code_for(StreamClosed("x")) == ErrorCode.NOT_LEADER_OR_FOLLOWER
    assert error_code_for(StorageError("x")) == ErrorCode.KAFKA_STORAGE_ERROR
    assert error_code_for(TimeoutError()) == ErrorCode.REQUEST_TIMED_OUT
    assert error_code_for(ValueError("a bug")) == ErrorCode.UNKNOWN_SERVER_ERROR
