"""Fixtures shared by the integration tests."""

from tests.integration.cluster_fixture import broker_cluster

__all__ = ["broker_cluster"]
