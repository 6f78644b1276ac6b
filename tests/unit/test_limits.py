"""keybroker.limits on an injected clock: buckets refill, caps recount and name when to retry."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest

from keybroker.errors import TooManyRequests
from keybroker.limits import FailureLimit, Outstanding, OutstandingCap, TokenBucket, client_key


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize(
    ("host", "key"),
    [
        ("192.0.2.7", "192.0.2.7"),
        ("::ffff:192.0.2.7", "192.0.2.7"),
        ("2001:db8:1:2:aaaa::1", "2001:db8:1:2::/64"),
        ("2001:db8:1:2:ffff::9", "2001:db8:1:2::/64"),
        ("testclient", "testclient"),
        (None, "unknown"),
    ],
)
def test_client_key(host: str | None, key: str) -> None:
    assert client_key(host) == key


def test_token_bucket_refills_to_its_capacity() -> None:
    b = TokenBucket(2, 0.5, now=0.0)
    b.charge(0.0)
    b.charge(0.0)
    assert b.wait(0.0) == pytest.approx(2.0)
    b.charge(0.0)  # never below empty
    assert b.wait(1.0) == pytest.approx(1.0) and b.wait(2.0) == 0
    assert b.full(100.0) and b.wait(100.0) == 0


def test_failure_limit_per_client_refills_and_the_global_bucket_holds() -> None:
    clock = Clock()
    limit = FailureLimit("tries", 2, 3, clock=clock)
    for _ in range(2):
        limit.check("a")
        limit.charge("a")
    with pytest.raises(TooManyRequests, match="from this address") as exc:
        limit.check("a")
    assert exc.value.retry_after == 30  # 2 a minute: one every 30 s
    limit.check("b")
    limit.charge("b")
    with pytest.raises(TooManyRequests, match="all addresses") as exc:
        limit.check("c")
    assert exc.value.retry_after == 20  # 3 a minute: one every 20 s
    clock.now += 20
    limit.check("c")
    with pytest.raises(TooManyRequests):
        limit.check("a")
    clock.now += 10
    limit.check("a")


def test_failure_limit_keeps_a_bounded_number_of_buckets() -> None:
    clock = Clock()
    limit = FailureLimit("tries", 1, 1000, clock=clock, max_clients=2)
    for client in ("a", "b", "c"):
        limit.charge(client)
    limit.check("a")  # evicted: the oldest went first
    with pytest.raises(TooManyRequests):
        limit.check("c")


def test_outstanding_cap_counts_locally_between_reads() -> None:
    clock = Clock()
    now = datetime(2030, 1, 1, tzinfo=UTC)
    cap = OutstandingCap("things", 3, refresh=1.0, clock=clock)
    reads: list[int] = []

    def read(count: int, first: datetime | None = None) -> Callable[[], Outstanding]:
        def run() -> Outstanding:
            reads.append(count)
            return Outstanding(count, first)

        return run

    cap.admit(read(1), now)  # a stale count is read first: 1 in the database, then this one
    cap.admit(read(99), now)  # fresh: not read again
    assert reads == [1]
    with pytest.raises(TooManyRequests) as exc:
        cap.admit(read(99), now)
    assert exc.value.retry_after == 1  # no expiry known: the next count
    with pytest.raises(TooManyRequests):
        cap.check_room(now)

    clock.now += 1.0
    expiry = (now + timedelta(seconds=42.5)).replace(tzinfo=None)  # SQLite hands back naive UTC
    with pytest.raises(TooManyRequests, match="3 things are outstanding") as exc:
        cap.admit(read(3, expiry), now)
    assert exc.value.retry_after == 43
    clock.now += 1.0
    cap.admit(read(0), now)
    assert reads == [1, 3, 0]


def test_outstanding_cap_read_failure_is_retried() -> None:
    clock = Clock()
    cap = OutstandingCap("things", 3, clock=clock)
    now = datetime(2030, 1, 1, tzinfo=UTC)

    def broken() -> Outstanding:
        raise RuntimeError("database down")

    with pytest.raises(RuntimeError):
        cap.admit(broken, now)
    cap.admit(lambda: Outstanding(2, None), now)  # read at once, not after the period
    with pytest.raises(TooManyRequests):
        cap.admit(lambda: Outstanding(0, None), now)
