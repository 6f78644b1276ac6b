"""Admission limits for unauthenticated requests: token buckets per client address, and a cap on
outstanding challenges counted without a COUNT per request.

Pure: the clock is injected, and the database is reached only through the ``read`` callable that
:meth:`OutstandingCap.admit` is given. Both raise :class:`~keybroker.errors.TooManyRequests`
(429 with ``Retry-After``). State is per process: each replica limits on its own.
"""

from __future__ import annotations

import ipaddress
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from keybroker.errors import TooManyRequests

Clock = Callable[[], float]


def client_key(host: str | None) -> str:
    """The address a client is limited by: IPv4 as is, IPv6 by its /64 (one host usually holds a
    whole /64, so per-address buckets would be free for it to multiply)."""
    if not host:
        return "unknown"
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return host
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


class TokenBucket:
    """``capacity`` tokens, refilled continuously at ``per_second``; one token per charge."""

    __slots__ = ("capacity", "per_second", "_tokens", "_stamp")

    def __init__(self, capacity: int, per_second: float, now: float) -> None:
        if capacity < 1 or per_second <= 0:
            raise ValueError("a token bucket needs capacity >= 1 and a positive refill rate")
        self.capacity = capacity
        self.per_second = per_second
        self._tokens = float(capacity)
        self._stamp = now

    def _fill(self, now: float) -> None:
        if now > self._stamp:
            self._tokens = min(self.capacity, self._tokens + (now - self._stamp) * self.per_second)
            self._stamp = now

    def wait(self, now: float) -> float:
        """Seconds until one token is there (0: there is one now)."""
        self._fill(now)
        return 0.0 if self._tokens >= 1 else (1 - self._tokens) / self.per_second

    def charge(self, now: float) -> None:
        self._fill(now)
        self._tokens = max(0.0, self._tokens - 1)

    def full(self, now: float) -> bool:
        self._fill(now)
        return self._tokens >= self.capacity


class FailureLimit:
    """Failed attempts per minute from one client (see :func:`client_key`) and from all together.

    A client whose bucket, or the global one, is empty is refused (429) before its request is looked
    at, until a token is back; each failure takes one token from both. The bucket size is the
    per-minute rate (the burst). At most ``max_clients`` buckets are kept: the least recently used
    go first (a full bucket is as good as none), which the global bucket still bounds.
    """

    def __init__(
        self,
        what: str,
        per_client_per_minute: int,
        total_per_minute: int,
        *,
        clock: Clock = time.monotonic,
        max_clients: int = 10_000,
    ) -> None:
        self._what = what
        self._per_client = per_client_per_minute
        self._clock = clock
        self._max_clients = max_clients
        self._lock = threading.Lock()
        self._total = TokenBucket(total_per_minute, total_per_minute / 60, clock())
        self._clients: OrderedDict[str, TokenBucket] = OrderedDict()

    def _bucket(self, client: str, now: float) -> TokenBucket:
        bucket = self._clients.get(client)
        if bucket is None:
            bucket = TokenBucket(self._per_client, self._per_client / 60, now)
            self._clients[client] = bucket
            while len(self._clients) > self._max_clients:
                self._clients.popitem(last=False)
        else:
            self._clients.move_to_end(client)
        return bucket

    def check(self, client: str) -> None:
        """Refuse ``client`` while its bucket or the global one is empty."""
        with self._lock:
            now = self._clock()
            own = self._clients.get(client)
            wait_own = own.wait(now) if own is not None else 0.0
            wait_all = self._total.wait(now)
        if wait_own or wait_all:
            whose = "from this address" if wait_own >= wait_all else "from all addresses together"
            raise TooManyRequests(
                f"too many failed {self._what} {whose}; retry in {math.ceil(max(wait_own, wait_all))} s",
                retry_after=math.ceil(max(wait_own, wait_all)),
            )

    def charge(self, client: str) -> None:
        """Count one failure of ``client``."""
        with self._lock:
            now = self._clock()
            self._bucket(client, now).charge(now)
            self._total.charge(now)


@dataclass(frozen=True)
class Outstanding:
    """What the database holds: outstanding challenges and the earliest expiry among them."""

    count: int
    next_expiry: datetime | None


class OutstandingCap:
    """At most ``limit`` outstanding (unexpired, unused) challenges of one kind, counted cheaply.

    The count is the database's (all replicas'), read at most once per ``refresh`` seconds by the
    request that finds it stale (``read`` also drops expired rows), plus this process's own issues
    since. Other replicas' issues since their last read are not seen: the cap may be overshot by
    about (replicas - 1) x their issue rate x ``refresh``. A challenge used or expired frees its
    place at the next read. Only issuing is limited; using a challenge already issued never is.
    """

    def __init__(
        self,
        what: str,
        limit: int,
        *,
        refresh: float = 1.0,
        clock: Clock = time.monotonic,
    ) -> None:
        if limit < 1:
            raise ValueError("an outstanding cap must be at least 1")
        self.what = what
        self.limit = limit
        self._refresh = refresh
        self._clock = clock
        self._lock = threading.Lock()
        self._count = 0
        self._next_expiry: datetime | None = None
        self._due = -math.inf
        self._reading = False

    def _refuse(self, now: datetime) -> TooManyRequests:
        wait = 1
        if self._next_expiry is not None:
            expiry = self._next_expiry if self._next_expiry.tzinfo else self._next_expiry.replace(tzinfo=UTC)
            wait = math.ceil((expiry - now).total_seconds())
        wait = max(wait, math.ceil(self._refresh))
        return TooManyRequests(
            f"{self.limit} {self.what} are outstanding, the most this service keeps: "
            f"retry in {wait} s, when the oldest has been used or has expired",
            retry_after=wait,
        )

    def check_room(self, now: datetime) -> None:
        """Refuse now if the last count is at the cap (no read, nothing counted): for a request that
        would first cost something elsewhere (a remote service's nonce)."""
        with self._lock:
            if self._count >= self.limit:
                raise self._refuse(now)

    def admit(self, read: Callable[[], Outstanding], now: datetime) -> None:
        """Count one more challenge, or raise :class:`TooManyRequests` at the cap. ``read`` runs
        (in the caller's transaction) when the last count is older than ``refresh`` seconds."""
        with self._lock:
            stale = not self._reading and self._clock() >= self._due
            self._reading = self._reading or stale
        if stale:
            try:
                fresh = read()
            except BaseException:
                with self._lock:
                    self._reading = False
                raise
            with self._lock:
                self._count, self._next_expiry = fresh.count, fresh.next_expiry
                self._due = self._clock() + self._refresh
                self._reading = False
        with self._lock:
            if self._count >= self.limit:
                raise self._refuse(now)
            self._count += 1
