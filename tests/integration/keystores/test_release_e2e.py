"""Attested release of a key held in each real key manager to a simulated workload (/kbs/v1).

For the HSM, keys are generated inside the token and wrapped there (RFC 5649 under the session key):
their plaintext never exists in the broker process.
"""

from __future__ import annotations

import base64

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from tests.api.test_transfer_v1 import _WORKLOAD, SPKI, TDX_SIM_POLICY
from tests.helpers.api import unwrap_v1
from tests.integration.keystores.conftest import Broker

from keybroker.api.services import DEV_PKI_DIR
from keybroker.tee import sim
from keybroker.wire import binding


@pytest.mark.parametrize(
    ("info", "check"),
    [
        ({"algorithm": "AES", "key_length": 256}, "aes"),
        ({"algorithm": "EC", "curve_type": "secp256r1"}, "ec"),
    ],
)
def test_release_from_backend(broker: Broker, info: dict[str, object], check: str) -> None:
    c, h = broker.client, broker.headers
    pid = c.post("/kbs/v1/key-transfer-policies", json=TDX_SIM_POLICY, headers=h).json()["id"]
    r = broker.create(info, transfer_policy_id=pid)
    assert r.status_code == 201, r.text
    kid = r.json()["key_information"]["id"]
    pki = sim.DevPki.load(broker.services.settings.data_dir / DEV_PKI_DIR)

    n = c.post(f"/kbs/v1/keys/{kid}/transfer")
    nonce = base64.b64decode(n.json()["nonce"]["val"])
    quote = sim.tdx_quote(pki, report_data=binding.v1_report_data(nonce, SPKI))
    body = {
        "quote": base64.b64encode(quote).decode(),
        "nonce": {"val": n.json()["nonce"]["val"]},
        "user_data": base64.b64encode(SPKI).decode(),
    }
    r = c.post(f"/kbs/v1/keys/{kid}/transfer", json=body, headers={"Attestation-Type": "TDX"})
    assert r.status_code == 200, r.text
    secret = unwrap_v1(r.json(), _WORKLOAD)
    if check == "aes":
        assert len(secret) == 32
    else:
        key = serialization.load_der_private_key(secret, None)
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        pub = (
            key.public_key()
            .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
            .decode()
        )
        stored = c.get(f"/kbs/v1/keys/{kid}", headers=h).json()["key_information"]["public_key"]
        assert pub == stored
    # a TD with another MRTD gets nothing from any backend
    n = c.post(f"/kbs/v1/keys/{kid}/transfer")
    nonce = base64.b64decode(n.json()["nonce"]["val"])
    quote = sim.tdx_quote(pki, report_data=binding.v1_report_data(nonce, SPKI), mrtd=b"\x09" * 48)
    body = {
        "quote": base64.b64encode(quote).decode(),
        "nonce": {"val": n.json()["nonce"]["val"]},
        "user_data": base64.b64encode(SPKI).decode(),
    }
    r = c.post(f"/kbs/v1/keys/{kid}/transfer", json=body, headers={"Attestation-Type": "TDX"})
    assert r.status_code == 403 and any("mrtd" in x for x in r.json()["reasons"])
