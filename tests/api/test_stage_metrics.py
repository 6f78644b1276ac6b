"""/metrics serves the per-stage CPU totals (keybroker.stages) only when the benchmark switched the
accounting on; a normal server says nothing of them."""

from __future__ import annotations

import re

from fastapi.testclient import TestClient

from keybroker import stages
from keybroker.api.app import create_app
from keybroker.api.services import Services


def test_stage_totals_only_when_switched_on(services: Services) -> None:
    stages.enable(False)
    assert "keybroker_bench_stage" not in TestClient(create_app(services)).get("/metrics").text
    stages.reset()
    stages.enable()
    try:
        client = TestClient(create_app(services))
        with stages.stage("verify"):
            sum(range(10_000))
        with stages.stage("verify"):
            pass
        text = client.get("/metrics").text
    finally:
        stages.enable(False)
        stages.reset()
    assert re.search(r'^keybroker_bench_stage_calls_total\{stage="verify"\} 2\.0$', text, re.M), text
    seconds = re.search(r'^keybroker_bench_stage_cpu_seconds_total\{stage="verify"\} (\S+)$', text, re.M)
    assert seconds is not None and float(seconds.group(1)) > 0
