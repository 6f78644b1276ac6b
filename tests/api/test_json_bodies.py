"""Every JSON body is read strictly: hostile encodings are a 400 or 415 naming the problem, never a
500, and nothing is stored (adversarial review, issue 11)."""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from keybroker.api.app import create_app
from keybroker.api.services import Services
from keybroker.config import Settings
from keybroker.store.models import KbsResource, Key, TransferPolicy

_KEY = str(uuid.uuid4())
_POLICY = str(uuid.uuid4())

#: Every operation that reads a JSON body: the pydantic-bodied ones and the three that read their own.
JSON_ENDPOINTS: list[tuple[str, str]] = [
    ("POST", f"/kbs/v1/keys/{_KEY}/transfer"),
    ("POST", "/kbs/v0/attest"),
    ("POST", "/kbs/v0/resource/repo/type/tag"),
    ("POST", "/kbs/v0/auth"),
    ("POST", "/kbs/v0/resource-policy/repo/type/tag"),
    ("POST", "/kbs/v1/keys"),
    ("POST", f"/kbs/v1/keys/{_KEY}/certificate"),
    ("POST", "/kbs/v1/key-transfer-policies"),
    ("PUT", f"/kbs/v1/key-transfer-policies/{_POLICY}"),
    ("POST", "/attestation/v1/attest"),
    ("POST", "/attestation/v1/verify"),
    ("POST", "/sys/v1/init"),
    ("POST", "/sys/v1/unseal"),
]

#: (name, body, what the detail must say). Each made the stdlib reader raise, or accept what it should not.
ATTACKS: list[tuple[str, bytes, str]] = [
    ("deep array", b"[" * 50_000 + b"]" * 50_000, "deeper than 32 levels"),
    ("deep object", b'{"a":' * 50_000 + b"1" + b"}" * 50_000, "deeper than 32 levels"),
    ("moderately deep", b'{"a":' * 40 + b"1" + b"}" * 40, "deeper than 32 levels"),
    ("5000-digit integer", b'{"x": ' + b"7" * 5000 + b"}", "outside ±(2**53 - 1)"),
    ("integer past 2**53", b'{"x": 9007199254740993}', "outside ±(2**53 - 1)"),
    ("float overflow", b'{"x": 1e400}', "too large for a 64-bit float"),
    ("NaN", b'{"x": NaN}', "NaN is not a JSON number"),
    ("invalid UTF-8", b'{"x": "\xff\xfe"}', "not valid UTF-8 (byte 0xff at offset 7)"),
    ("CESU surrogate bytes", b'{"x": "\xed\xa0\x80"}', "not valid UTF-8"),
    ("UTF-16", '{"x": 1}'.encode("utf-16"), "not valid UTF-8"),
    ("BOM", b'\xef\xbb\xbf{"x": 1}', "byte order mark"),
    ("lone surrogate", b'{"x": "\\ud800"}', "x: contains a lone UTF-16 surrogate (\\ud800)"),
    ("lone low surrogate in a name", b'{"\\udc00": 1}', "lone UTF-16 surrogate (\\udc00)"),
    ("NUL", b'{"x": "a\\u0000b"}', "x: contains U+0000"),
    ("duplicate member", b'{"x": 1, "x": 2}', "'x' appears twice"),
    ("not JSON", b"{'x': 1}", "not valid JSON"),
]


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[TestClient, Services, dict[str, str]]]:
    tmp: Path = tmp_path_factory.mktemp("bodies")
    svc = Services.build(Settings(data_dir=tmp / "data", database=f"sqlite:///{tmp / 'kb.db'}", dev=True))
    admin = {"Authorization": "Bearer " + svc.tokens.mint("test-admin", ["*:*"])}
    with TestClient(create_app(svc), base_url="https://testserver") as client:
        yield client, svc, admin
    svc.db.dispose()


def _nothing_stored(svc: Services) -> None:
    with svc.db.session() as s:
        for model in (Key, TransferPolicy, KbsResource):
            assert s.scalar(select(func.count()).select_from(model)) == 0, model.__tablename__


@pytest.mark.parametrize(("name", "body", "says"), ATTACKS, ids=[a[0] for a in ATTACKS])
def test_hostile_json_is_a_400_naming_it_on_every_json_endpoint(
    env: tuple[TestClient, Services, dict[str, str]], name: str, body: bytes, says: str
) -> None:
    client, svc, admin = env
    for method, path in JSON_ENDPOINTS:
        r = client.request(method, path, content=body, headers={**admin, "Content-Type": "application/json"})
        assert r.status_code == 400, (method, path, r.status_code, r.text[:300])
        assert r.headers["content-type"] == "application/problem+json"
        problem = r.json()
        assert problem["title"] == "Invalid input", (path, problem)
        assert says in problem["detail"], (path, problem["detail"])
        assert problem["instance"] == path
    _nothing_stored(svc)


@pytest.mark.parametrize("charset", ["latin1", "iso-8859-1", "utf-16", '"windows-1252"'])
def test_a_charset_other_than_utf8_is_a_415(
    env: tuple[TestClient, Services, dict[str, str]], charset: str
) -> None:
    client, svc, admin = env
    for method, path in JSON_ENDPOINTS:
        r = client.request(
            method,
            path,
            content=b'{"x": "caf\xe9"}',
            headers={**admin, "Content-Type": f"application/json; charset={charset}"},
        )
        assert r.status_code == 415, (method, path, r.status_code, r.text[:300])
        assert r.json()["title"] == "Unsupported media type"
        assert f"charset={charset.strip(chr(34)).lower()} is not accepted" in r.json()["detail"]
    _nothing_stored(svc)


def test_pydantic_bodies_need_the_json_media_type(env: tuple[TestClient, Services, dict[str, str]]) -> None:
    """FastAPI handed a text/plain body to the model as bytes (a confusing 400); it is a 415 now."""
    client, _, admin = env
    for method, path in JSON_ENDPOINTS:
        if path.startswith("/kbs/v0/resource/"):
            continue  # raw secret bytes are a valid body there
        r = client.request(method, path, content=b'{"x": 1}', headers={**admin, "Content-Type": "text/plain"})
        assert r.status_code == 415, (method, path, r.status_code, r.text[:300])
        assert "send the body as Content-Type: application/json" in r.json()["detail"]


def test_utf8_charset_and_surrogate_pairs_are_accepted(
    env: tuple[TestClient, Services, dict[str, str]],
) -> None:
    client, svc, admin = env
    body = {"key_information": {"algorithm": "AES", "key_length": 256}, "label": "caf\u00e9 \U0001f600"}
    raw = json.dumps(body).encode()  # ASCII: the emoji as the escaped pair \ud83d\ude00
    assert b"\\ud83d\\ude00" in raw
    r = client.post(
        "/kbs/v1/keys", content=raw, headers={**admin, "Content-Type": "application/json; charset=UTF-8"}
    )
    assert r.status_code == 201, r.text
    key_id = r.json()["key_information"]["id"]
    assert client.get(f"/kbs/v1/keys/{key_id}", headers=admin).json()["label"] == "caf\u00e9 \U0001f600"
    assert client.delete(f"/kbs/v1/keys/{key_id}", headers=admin).status_code == 204


def test_a_lone_surrogate_in_a_policy_is_refused_and_the_listing_keeps_working(
    env: tuple[TestClient, Services, dict[str, str]],
) -> None:
    """The review's attack: a policy with "\\ud800" was stored and GET /key-transfer-policies was a 500."""
    client, svc, admin = env
    policy = {
        "attestation_type": ["SGX"],
        "sgx": {"attributes": {"mrsigner": ["a" * 64], "isvprodid": [1]}, "policy_ids": ["\ud800"]},
    }
    r = client.post(
        "/kbs/v1/key-transfer-policies",
        content=json.dumps(policy).encode(),
        headers={**admin, "Content-Type": "application/json"},
    )
    assert r.status_code == 400, r.text
    assert r.json()["field"] == "sgx.policy_ids.0"
    assert "lone UTF-16 surrogate" in r.json()["detail"]
    listing = client.get("/kbs/v1/key-transfer-policies", headers=admin)
    assert listing.status_code == 200 and listing.json() == []
    _nothing_stored(svc)


def test_nested_json_strings_in_kbs_v0_are_read_strictly(
    env: tuple[TestClient, Services, dict[str, str]],
) -> None:
    """extra-params may be a JSON string; 5000 levels inside it were a RecursionError (500)."""
    client, _, _ = env
    r = client.post(
        "/kbs/v0/auth", json={"version": "0.4.0", "tee": "tdx", "extra-params": "[" * 5000 + "]" * 5000}
    )
    assert r.status_code == 400, r.text
    assert "extra-params nests arrays and objects deeper than 32 levels" in r.json()["detail"]


def test_a_deeply_nested_token_header_is_a_401(env: tuple[TestClient, Services, dict[str, str]]) -> None:
    """A bearer EAR whose header is 40,000 nested arrays was a RecursionError (500) at /kbs/v0/resource."""
    client, _, _ = env
    header = base64.urlsafe_b64encode(b"[" * 40_000).rstrip(b"=").decode()
    for path in ("/kbs/v0/resource/repo/type/tag", "/kbs/v1/keys"):
        r = client.get(path, headers={"Authorization": f"Bearer {header}.e30.c2ln"})
        assert r.status_code == 401, (path, r.status_code, r.text[:300])
        assert r.json()["title"] == "Unauthenticated"
