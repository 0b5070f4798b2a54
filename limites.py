"""Rate limits and per-address budgets: what one address may make the server do.

* ``TokenBucket`` is the one rate limiter of the project: commands per
  connection, lines and bytes per address, registrations, TLS handshakes,
  discovery answers, the client's own pace. A bucket refills at ``rate``
  units per second up to ``burst``: a burst may go at once, then the
  average rate holds.
* ``AddressBook`` keeps, for every client address the server has seen, its
  connection count and its budgets (``AddressState``). A state outlives the
  address's connections, so closing and reopening connections never resets
  a budget; the table is bounded.

No sockets, no threads. Times are ``time.monotonic()`` readings; methods
take an optional ``now`` so that tests can pass their own.
"""

from __future__ import annotations

import collections
import ipaddress
import threading
import time
from dataclasses import dataclass

ADDRESS_IDLE_FORGET_S = 600.0
"""An address with no connection and full budgets is forgotten after this long."""
MAX_ADDRESSES = 100_000
"""Bound on the per-address table (the addresses with connections always stay)."""


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


def address_key(ip: str) -> str:
    """What counts as "one address" for the per-address limits.

    An IPv6 host usually owns a whole /64 and can pick any address in it,
    so IPv6 addresses are counted by their /64; IPv4 by the exact address.
    """
    if ":" not in ip:
        return ip
    try:
        network = ipaddress.ip_network(f"{ip.split('%')[0]}/64", strict=False)
    except ValueError:
        return ip
    return str(network)


def bucket_or_none(rate: float, burst: int) -> TokenBucket | None:
    """A rate limit, or None when the option turned it off (0)."""
    return TokenBucket(rate, burst) if rate else None


@dataclass(frozen=True)
class AddressLimits:
    """What one address may have and do (0 turns a limit off); see ``ServerConfig``."""

    max_clients: int = 0
    max_per_ip: int = 0
    lines: float = 0
    lines_burst: int = 1
    bytes: float = 0
    bytes_burst: int = 1
    registrations: float = 0
    registrations_burst: int = 1
    tls_handshakes: float = 0
    tls_handshakes_burst: int = 1
    failed_passwords: int = 0
    accounts_per_hour: int = 0


class AddressState:
    """What one address has and may still do, shared by all its connections.

    It outlives the connections (for ``ADDRESS_IDLE_FORGET_S``), so closing
    and reopening connections never resets a budget.
    """

    def __init__(self, key: str, limits: AddressLimits) -> None:
        self.key = key
        self.connections = 0
        self.handshakes = 0
        self.last_used = time.monotonic()
        self.lines = bucket_or_none(limits.lines, limits.lines_burst)
        self.bytes = bucket_or_none(limits.bytes, limits.bytes_burst)
        self.registrations = bucket_or_none(limits.registrations, limits.registrations_burst)
        self.tls_handshakes = bucket_or_none(limits.tls_handshakes, limits.tls_handshakes_burst)
        # Only the newest `limit` times matter for either limit: keep just those.
        self.failed_passwords: collections.deque[float] = collections.deque(
            maxlen=max(1, limits.failed_passwords))
        self.accounts_created: collections.deque[float] = collections.deque(
            maxlen=max(1, limits.accounts_per_hour))
        # What this address made the server do, ever (for tests and diagnostics).
        self.lines_read = 0
        self.bytes_charged = 0
        self.handshakes_refused = 0

    def charge_reading(self, lines: int, nbytes: int) -> None:
        """Pay for what a connection of this address just read or caused."""
        self.lines_read += lines
        self.bytes_charged += nbytes
        if self.lines is not None and lines:
            self.lines.charge(lines)
        if self.bytes is not None and nbytes:
            self.bytes.charge(nbytes)

    def reading_delay(self) -> float:
        """Seconds this address's connections must wait before reading again."""
        delay = 0.0
        if self.lines is not None:
            delay = self.lines.wait()
        if self.bytes is not None:
            delay = max(delay, self.bytes.wait())
        return delay

    def read_allowance(self, most: int, least: int) -> int:
        """Bytes a connection of this address may read now, between ``least`` and ``most``.

        Each byte read may end a line, so the lines budget bounds it too.
        """
        allowance = most
        for bucket in (self.lines, self.bytes):
            if bucket is not None:
                allowance = min(allowance, int(bucket.level()))
        return max(allowance, least)

    def idle(self, now: float) -> bool:
        """True when forgetting this address would give nothing back to anyone."""
        if self.connections or self.handshakes or now - self.last_used < ADDRESS_IDLE_FORGET_S:
            return False
        buckets = (self.lines, self.bytes, self.registrations, self.tls_handshakes)
        return all(bucket is None or bucket.full() for bucket in buckets)


class AddressBook:
    """The per-address table: connection counts and budgets, bounded in size."""

    def __init__(self, limits: AddressLimits) -> None:
        self.limits = limits
        self._lock = threading.Lock()
        self._states: dict[str, AddressState] = {}

    def admit(self, ip: str, total: int) -> tuple[AddressState | None, str]:
        """Count a new connection from ``ip``: (its state, "") or (None, why not).

        ``total`` is how many connections the server has; the reason is the
        Portuguese text of the ``ERRO LOTADO`` line.
        """
        limits = self.limits
        if limits.max_clients and total >= limits.max_clients:
            return None, f"servidor lotado ({limits.max_clients} conexões)"
        key = address_key(ip)
        with self._lock:
            state = self._states.get(key)
            if state is None:
                if len(self._states) >= MAX_ADDRESSES:
                    self._forget_idle_locked(time.monotonic(), force=True)
                state = self._states[key] = AddressState(key, limits)
            if limits.max_per_ip and state.connections >= limits.max_per_ip:
                return None, f"limite de {limits.max_per_ip} conexões por endereço atingido"
            state.connections += 1
            state.last_used = time.monotonic()
            return state, ""

    def release(self, state: AddressState) -> None:
        """Undo ``admit`` for one connection."""
        with self._lock:
            state.connections = max(0, state.connections - 1)
            state.last_used = time.monotonic()

    def get(self, ip: str) -> AddressState | None:
        """The state of ``ip``'s address, if the server knows it."""
        return self._states.get(address_key(ip))

    def forget_idle(self) -> None:
        with self._lock:
            self._forget_idle_locked(time.monotonic(), force=False)

    def _forget_idle_locked(self, now: float, force: bool) -> None:
        for key in [key for key, state in self._states.items()
                    if state.idle(now) or (force and not state.connections)]:
            del self._states[key]

    def __len__(self) -> int:
        return len(self._states)
