"""A token bucket for producer rate limiting, asked once per batch (not per record)."""

from __future__ import annotations


class TokenBucket:
    """`rate` tokens per second, banking at most `burst_s` seconds of them.

    The bank rides out scheduler hiccups on a busy machine (the producer
    catches up on what it missed) without turning into long bursts.
    """

    def __init__(self, rate: float, now: float, burst_s: float = 0.05) -> None:
        if rate <= 0:
            raise ValueError("rate must be positive")
        self.rate = rate
        self.capacity = max(1.0, rate * burst_s)
        self.tokens = 0.0
        self.last = now

    def available(self, now: float) -> int:
        """Whole tokens that may be spent now."""
        self.tokens = min(self.capacity, self.tokens + (now - self.last) * self.rate)
        self.last = now
        return int(self.tokens)

    def spend(self, n: int) -> None:
        self.tokens -= n

    def wait_s(self) -> float:
        """Seconds until the next whole token."""
        return max(0.0, (1.0 - self.tokens) / self.rate)
