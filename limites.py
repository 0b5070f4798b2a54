"""The token bucket: the one rate limiter of the project (server, discovery, client).

Every rate here -- commands per connection, lines and bytes per address,
registrations, TLS handshakes, discovery answers, the client's own pace --
is a bucket that refills at ``rate`` units per second up to ``burst``: a
burst may go at once, then the average rate holds. No sockets, no threads.

Times are ``time.monotonic()`` readings; every method takes an optional
``now`` so that tests (and callers that already read the clock) can pass
their own.
"""

from __future__ import annotations

import time


class TokenBucket:
    """Allow ``rate`` units per second on average, ``burst`` at once; starts full.

    ``take`` spends only what is there; ``charge`` may drive the level below
    zero (a whole read is paid for even when it costs more than is left), and
    ``wait`` then says how long until the debt is paid. A bucket shared by
    threads needs no lock where a lost update under a thread switch only lets
    one batch through a little early (the server's per-address budgets).
    """

    __slots__ = ("_level", "_stamp", "burst", "rate")

    def __init__(self, rate: float, burst: float, now: float | None = None) -> None:
        self.rate = rate
        self.burst = max(1.0, float(burst))
        self._level = self.burst
        self._stamp = time.monotonic() if now is None else now

    def _refill(self, now: float | None) -> float:
        now = time.monotonic() if now is None else now
        if now > self._stamp:
            self._level = min(self.burst, self._level + (now - self._stamp) * self.rate)
            self._stamp = now
        return self._level

    def take(self, amount: float = 1.0, now: float | None = None) -> bool:
        """Spend ``amount`` if it is there; False (spending nothing) if not."""
        if self._refill(now) >= amount:
            self._level -= amount
            return True
        return False

    def charge(self, amount: float, now: float | None = None) -> None:
        """Spend ``amount`` whatever is left, going into debt if needed."""
        self._refill(now)
        self._level -= amount

    def wait(self, amount: float = 0.0, now: float | None = None) -> float:
        """Seconds until more than ``amount`` is there (0 if it already is).

        With the default, until the bucket is out of debt.
        """
        level = self._refill(now)
        if level > amount:
            return 0.0
        return (amount - level) / self.rate + 1e-3 if self.rate > 0 else float("inf")

    def level(self, now: float | None = None) -> float:
        """What is there now (negative while in debt)."""
        return self._refill(now)

    def full(self, now: float | None = None) -> bool:
        """True when the bucket is as a new one would be: forgetting it changes nothing."""
        return self._refill(now) >= self.burst
