"""A revoked TPM AK stays revoked under any public area: a revocation is of the AK's key, which an
AK certificate also vouches for whatever Name the public area sent with it gives.

Regression: revocations were looked up by Name only. The same key resent in another public area (here
the RSA exponent written out as 65537 instead of 0, its default) is another Name, "not enrolled", so
an AK certificate that still chains made it trusted again.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from tests.api.test_console_tees import GCE_CAS, GCE_QUOTE, gce_service
from tests.helpers.api import token_headers
from tests.vectors.corpus import read_bytes

from keybroker.api.app import create_app
from keybroker.api.services import Services
from keybroker.cli.evidence_tpm import tpm_cli_evidence
from keybroker.store.models import TpmAk
from keybroker.tee.tpm.abi import parse_tpmt_public

pytestmark = pytest.mark.filterwarnings(
    "ignore:Parsed a serial number", "ignore::cryptography.utils.CryptographyDeprecationWarning"
)

_ALG_NULL = 0x0010


@pytest.fixture
def gce(request: pytest.FixtureRequest, tmp_path: Path, database_url: str) -> Iterator[Services]:
    with gce_service(request, tmp_path, database_url) as svc:
        yield svc


def _with_exponent_written_out(tpm2b_public: bytes) -> bytes:
    """The same RSA key in a TPM2B_PUBLIC whose exponent is 65537 rather than 0 (Part 2, 12.2.3.5
    TPMS_RSA_PARMS: symmetric, scheme [+ its hash], keyBits, exponent)."""
    raw = tpm2b_public[2:]
    at = 8  # type, nameAlg, objectAttributes
    at += 2 + int.from_bytes(raw[at : at + 2], "big")  # authPolicy
    assert int.from_bytes(raw[at : at + 2], "big") == _ALG_NULL  # a signing key: no symmetric
    at += 2
    at += 2 if int.from_bytes(raw[at : at + 2], "big") == _ALG_NULL else 4  # the scheme [and hash]
    at += 2  # keyBits
    assert raw[at : at + 4] == bytes(4)
    changed = raw[:at] + (65537).to_bytes(4, "big") + raw[at + 4 :]
    return len(changed).to_bytes(2, "big") + changed


def _evidence(ak: bytes) -> str:
    document = tpm_cli_evidence(
        quote=read_bytes(f"{GCE_QUOTE}/quote_sha256.msg"),
        signature=read_bytes(f"{GCE_QUOTE}/quote_sha256.sig"),
        ak=ak,
        pcrs=read_bytes(f"{GCE_QUOTE}/pcrs_sha256.json"),
        ak_cert=read_bytes(f"{GCE_QUOTE}/ak_cert.der"),
        ak_ca=[read_bytes(c) for c in GCE_CAS],
        event_log=None,
    )
    return base64.b64encode(document).decode()


def test_a_revoked_ak_resent_in_another_public_area_is_still_revoked(gce: Services) -> None:
    ak = read_bytes(f"{GCE_QUOTE}/ak.tpm2b_public")
    other = _with_exponent_written_out(ak)
    genuine, resent = parse_tpmt_public(ak[2:]), parse_tpmt_public(other[2:])
    assert resent.public_key() == genuine.public_key() and resent.name != genuine.name

    headers = token_headers(gce, "attestation:verify")
    with TestClient(create_app(gce), base_url="https://127.0.0.1:9443") as client:

        def verify(ak: bytes) -> tuple[int, dict[str, object]]:
            r = client.post("/attestation/v1/verify", json={"quote": _evidence(ak)}, headers=headers)
            return r.status_code, r.json()

        assert verify(ak)[0] == 200  # certified by the gce AK CA
        assert verify(other)[0] == 200
        # the AK revoked, as 'keybroker tpm ak revoke' leaves it (this AK could not be enrolled here:
        # the corpus has no EK to activate a credential with)
        now = datetime.now(UTC)
        with gce.db.session() as s:
            s.add(
                TpmAk(
                    name=genuine.name.hex(),
                    public=genuine.raw,
                    ek_public=b"\x00",
                    ek_certificate=b"\x00",
                    ek_issuer="CN=EK CA",
                    ek_root="manufacturer",
                    ek_root_sha256="00" * 32,
                    status="revoked",
                    enrolled_by="token:ops",
                    enrolled_at=now,
                    revoked_by="token:ops",
                    revoked_at=now,
                    revoke_reason="host decommissioned",
                )
            )
        status, body = verify(ak)
        assert (
            status == 400
            and body["check"] == "ak_trust"
            and "was revoked by token:ops" in str(body["detail"])
        )
        status, body = verify(other)
        assert status == 400 and body["check"] == "ak_trust", body
        assert str(body["detail"]).startswith(
            f"the AK's key was revoked (as the AK {genuine.name.hex()}, by token:ops)"
        )
