"""keybroker.stages: nothing recorded when off; exclusive per-stage thread CPU when on."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest

from keybroker import stages


@pytest.fixture
def on() -> Iterator[None]:
    was = stages.enabled()
    stages.reset()
    stages.enable()
    try:
        yield
    finally:
        stages.enable(was)
        stages.reset()


def _spin(seconds: float) -> None:
    end = time.thread_time() + seconds
    while time.thread_time() < end:
        pass


def test_off_records_nothing_and_returns_one_shared_object() -> None:
    stages.reset()
    stages.enable(False)
    assert stages.stage("verify") is stages.stage("audit")
    with stages.stage("verify"):
        _spin(0.001)

    @stages.timed("audit")
    def f(x: int) -> int:
        return x + 1

    assert f(1) == 2
    assert stages.snapshot() == {}


def test_nested_stages_are_charged_exclusively(on: None) -> None:
    with stages.stage("database"):
        _spin(0.02)
        with stages.stage("audit"):
            _spin(0.03)
        _spin(0.01)
    snap = stages.snapshot()
    assert set(snap) == {"database", "audit"}
    db, db_calls = snap["database"]
    audit, audit_calls = snap["audit"]
    assert (db_calls, audit_calls) == (1, 1)
    # the outer stage is paused while the inner one runs
    assert 0.03 <= db < 0.045, db
    assert 0.03 <= audit < 0.04, audit


def test_a_stage_that_raises_is_charged_and_the_stack_unwinds(on: None) -> None:
    @stages.timed("verify")
    def failing() -> None:
        _spin(0.01)
        raise ValueError("bad evidence")

    with stages.stage("database"):
        with pytest.raises(ValueError):
            failing()
        _spin(0.01)
    snap = stages.snapshot()
    assert snap["verify"][1] == 1 and snap["verify"][0] >= 0.01
    assert snap["database"][1] == 1 and 0.01 <= snap["database"][0] < 0.02


def test_threads_keep_their_own_stacks(on: None) -> None:
    def work() -> None:
        with stages.stage("wrap"):
            _spin(0.01)

    threads = [threading.Thread(target=work) for _ in range(3)]
    with stages.stage("parse"):
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    snap = stages.snapshot()
    assert snap["wrap"][1] == 3 and snap["wrap"][0] >= 0.03
    # another thread's stage is not this thread's: "parse" only counts its own (little) CPU
    assert snap["parse"][1] == 1 and snap["parse"][0] < 0.01
