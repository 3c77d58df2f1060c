"""The one error the cost model raises for bad input; the CLI prints its message as one line."""

from __future__ import annotations


class CostError(ValueError):
    """Bad input: a negative throughput, an unknown instance type or pricing key, an unreadable file."""
