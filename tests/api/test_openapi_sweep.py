"""A property-based sweep of the whole API from its own OpenAPI document (schemathesis).

Every operation, in process (ASGI, no network), with an admin token (``*:*``): schema-valid and
schema-violating requests alike must never get a 5xx, and every response must be documented: its
status code, its content type and its body's schema. Run alone with ``pytest -m sweep``.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.generation.modes import GenerationMode
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_schema_conformance,
    status_code_conformance,
)
from tests.helpers import postgres
from tests.helpers.api import SGX_POLICY
from tests.helpers.snp_kds import real_items
from tests.vectors.corpus import path as corpus_path

from keybroker.api.app import ROUTERS, create_app
from keybroker.api.services import DEV_UNSEAL_FILE, Services
from keybroker.collateral.importers import read_file
from keybroker.collateral.items import TrustedRoots
from keybroker.collateral.kds_store import KdsStore
from keybroker.collateral.store import CollateralStore
from keybroker.config import Settings

pytestmark = pytest.mark.sweep

SGX_COLLATERAL = "intel-dcap/phala-dcap-qvl/sgx_quote_collateral.json"
#: Examples per operation: 38 operations on both databases in about two minutes on two cores.
EXAMPLES = 15


@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def sweep_services(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Services]:
    tmp: Path = tmp_path_factory.mktemp("sweep")
    if request.param == "sqlite":
        database = f"sqlite:///{tmp / 'kb.db'}"
    else:
        server: postgres.PostgresServer = request.getfixturevalue("pg_server")
        database = server.create_database("kb_sweep_" + uuid.uuid4().hex[:8])
    svc = Services.build(Settings(data_dir=tmp / "data", database=database, dev=True))
    yield svc
    svc.db.dispose()


@pytest.fixture(scope="module")
def admin(sweep_services: Services) -> dict[str, str]:
    return {"Authorization": "Bearer " + sweep_services.tokens.mint("sweep-admin", ["*:*"])}


@pytest.fixture(scope="module")
def api_schema(sweep_services: Services, admin: dict[str, str]) -> Any:
    app = create_app(sweep_services)
    _seed(TestClient(app, base_url="https://testserver"), sweep_services, admin)
    return schemathesis.openapi.from_asgi("/openapi.json", app)


def _seed(client: TestClient, services: Services, admin: dict[str, str]) -> None:
    """One of everything, so that listings and stored collateral answer 200 with real rows (the
    timestamps and the PCCS media types are checked against the schema only then)."""
    policy = client.post("/kbs/v1/key-transfer-policies", json=SGX_POLICY, headers=admin)
    assert policy.status_code == 201, policy.text
    aes = {
        "key_information": {"algorithm": "AES", "key_length": 256},
        "transfer_policy_id": policy.json()["id"],
    }
    assert client.post("/kbs/v1/keys", json=aes, headers=admin).status_code == 201
    ec = client.post(
        "/kbs/v1/keys",
        json={"key_information": {"algorithm": "EC", "curve_type": "secp256r1"}},
        headers=admin,
    )
    assert ec.status_code == 201, ec.text
    cert = client.post(
        f"/kbs/v1/keys/{ec.json()['key_information']['id']}/certificate",
        json={"common_name": "sweep.example.com"},
        headers=admin,
    )
    assert cert.status_code == 201, cert.text
    secret = client.post(
        "/kbs/v0/resource/repo/type/tag",
        content=b"s3cret",
        headers={**admin, "Content-Type": "application/octet-stream"},
    )
    assert secret.status_code == 204, secret.text
    CollateralStore(services.db).import_sources(
        [(SGX_COLLATERAL, read_file(corpus_path(SGX_COLLATERAL), TrustedRoots()))]
    )
    KdsStore(services.db).import_items(real_items(), source="sweep")  # the KDS endpoints answer 200 too


def _operations() -> list[tuple[str, str]]:
    return [
        (method, route.path)
        for router in ROUTERS
        for route in router.routes
        if isinstance(route, APIRoute) and route.include_in_schema
        for method in sorted(route.methods)
    ]


OPERATIONS = _operations()
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    negative_data_rejection,
]


def test_the_sweep_covers_every_documented_operation(api_schema: Any) -> None:
    documented = {
        (op.method.upper(), op.path) for result in api_schema.get_all_operations() for op in [result.ok()]
    }
    assert documented == set(OPERATIONS)


@pytest.mark.parametrize(("method", "path"), OPERATIONS, ids=[f"{m} {p}" for m, p in OPERATIONS])
def test_operation_conforms(
    method: str, path: str, api_schema: Any, admin: dict[str, str], sweep_services: Services
) -> None:
    """Schema-valid and schema-violating cases (schemathesis' pytest loader does not run on pytest 9:
    its lazy schema writes ``Function._nodeid``, so the operations are driven by hand)."""
    operation = api_schema[path][method]
    strategy = st.one_of(
        operation.as_strategy(GenerationMode.POSITIVE), operation.as_strategy(GenerationMode.NEGATIVE)
    )

    @given(case=strategy)
    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        derandomize=True,
        database=None,
        phases=[Phase.generate],
    )
    def run(case: Any) -> None:
        try:
            case.call_and_validate(headers=admin, checks=CHECKS)
        finally:
            # POST /sys/v1/seal is swept too: unseal again so that the next cases reach the keys
            if sweep_services.barrier.sealed:
                sweep_services.barrier.unseal_devfile(sweep_services.settings.data_dir / DEV_UNSEAL_FILE)

    run()
