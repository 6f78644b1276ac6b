"""What one transfer is: the variants measured, the workload's keys, the request sequences of /kbs/v1
and /kbs/v0, and the framework floor's requests of the same shape and size."""

from __future__ import annotations

import base64
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from keybroker.client import unwrap
from keybroker.keys import wrap
from keybroker.tee import sim
from keybroker.wire import binding


@dataclass(frozen=True)
class Variant:
    protocol: str  # "v1" | "v0"
    key: str  # "aes" (AES-256) | "rsa" (RSA-3072)
    workload: str  # "rsa3072" | "p256": the workload's ephemeral key
    primary: bool = False

    @property
    def name(self) -> str:
        return f"{self.protocol}/{self.key}/{self.workload}"

    @property
    def key_label(self) -> str:
        return {"aes": "AES-256", "rsa": "RSA-3072"}[self.key]

    @property
    def workload_label(self) -> str:
        return {"rsa3072": "RSA-3072", "p256": "EC P-256"}[self.workload]


VARIANTS = (
    Variant("v1", "aes", "rsa3072", primary=True),
    Variant("v1", "rsa", "rsa3072"),
    Variant("v0", "aes", "rsa3072", primary=True),
    Variant("v0", "rsa", "rsa3072"),
    Variant("v0", "aes", "p256"),
)
#: HTTP requests per transfer.
REQUESTS = {"v1": 2, "v0": 3}


def crypto_parts(v: Variant) -> list[str]:
    """The crypto components one transfer of ``v`` needs on the server (names in ``crypto.crypto_costs``)."""
    if v.protocol == "v1":
        return ["quote verification", f"SecL wrap {v.key_label}"]
    jwe = "RSA-OAEP-256" if v.workload == "rsa3072" else "ECDH-ES+A256KW"
    # The session's own EAR is not verified again at /resource (keybroker.attestation.ear.VerifiedEarCache:
    # it signed those very bytes); a bearer EAR from elsewhere would add "EAR verify (ES384)".
    return ["quote verification", "EAR issue (ES384)", f"JWE {jwe} {v.key_label}"]


@dataclass
class Workload:
    """The client side's ephemeral keys (one set for every client: the server does not care)."""

    rsa_priv: rsa.RSAPrivateKey
    ec_priv: ec.EllipticCurvePrivateKey
    spki: bytes = b""
    spki_b64: str = ""
    rsa_jwk: dict[str, object] = field(default_factory=dict)
    ec_jwk: dict[str, object] = field(default_factory=dict)

    @classmethod
    def generate(cls) -> Workload:
        w = cls(
            rsa.generate_private_key(public_exponent=65537, key_size=3072),
            ec.generate_private_key(ec.SECP256R1()),
        )
        w.spki = w.rsa_priv.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        w.spki_b64 = base64.b64encode(w.spki).decode()
        w.rsa_jwk = wrap.public_jwk(w.rsa_priv.public_key())
        w.ec_jwk = wrap.public_jwk(w.ec_priv.public_key())
        return w

    def jwk(self, kind: str) -> dict[str, object]:
        return self.rsa_jwk if kind == "rsa3072" else self.ec_jwk


@dataclass(frozen=True)
class Target:
    """What the clients talk to: one URL per replica (client i uses replica i mod n)."""

    urls: tuple[str, ...]
    ca: str
    tee: str
    key_ids: dict[str, str]  # "aes" | "rsa" -> key id
    resources: dict[str, str]  # "aes" | "rsa" -> repository/type/tag
    #: the peer only: "v1" | "v0" -> a real quote (base64) made once, sent by every peer transfer
    quotes: dict[str, str] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return self.urls[0]

    def url_for(self, client: int) -> str:
        return self.urls[client % len(self.urls)]


class TransferFailed(Exception):
    pass


def make_quote(pki: sim.DevPki, tee: str, report_data: bytes) -> bytes:
    if tee == "tdx":
        return sim.tdx_quote(pki, report_data=report_data)
    return sim.sgx_quote(pki, report_data=report_data, isvprodid=7, isvsvn=2)


def _ok(r: httpx.Response, step: str) -> httpx.Response:
    if r.status_code != 200:
        raise TransferFailed(f"{step}: HTTP {r.status_code} {r.text[:300]}")
    return r


Flow = Callable[[httpx.Client, Target, Variant, sim.DevPki, Workload], tuple[dict[str, Any], float]]


def transfer_v1(
    c: httpx.Client, t: Target, v: Variant, pki: sim.DevPki, w: Workload
) -> tuple[dict[str, Any], float]:
    """One /kbs/v1 transfer; returns the response body and the CPU seconds spent making the quote."""
    url = f"/kbs/v1/keys/{t.key_ids[v.key]}/transfer"
    r = _ok(c.post(url), "challenge")
    nonce_b64 = r.json()["nonce"]["val"]
    att = r.headers["Attestation-Type"]
    q0 = time.thread_time()
    quote = make_quote(pki, t.tee, binding.v1_report_data(base64.b64decode(nonce_b64), w.spki))
    qcpu = time.thread_time() - q0
    body = {"quote": base64.b64encode(quote).decode(), "nonce": {"val": nonce_b64}, "user_data": w.spki_b64}
    r = _ok(c.post(url, json=body, headers={"Attestation-Type": att}), "transfer")
    return r.json(), qcpu


def _v0_auth(c: httpx.Client, path: str, tee: str) -> tuple[str, dict[str, str]]:
    """KBS protocol auth: the nonce and the session cookie header."""
    r = _ok(c.post(path, json={"version": "0.4.0", "tee": tee, "extra-params": ""}), "auth")
    session = r.cookies.get("kbs-session-id")
    if not session:
        raise TransferFailed("auth: no kbs-session-id cookie")
    return r.json()["nonce"], {"Cookie": f"kbs-session-id={session}"}


def _v0_attest_body(tee: str, quote_b64: str, nonce: str, jwk: dict[str, object]) -> dict[str, Any]:
    """The attester's /attest body: runtime data and the quote as the CoCo attestation agent sends them."""
    primary: dict[str, Any] = {"quote": quote_b64}
    if tee == "tdx":
        primary["cc_eventlog"] = None
    return {
        "runtime-data": {"nonce": nonce, "tee-pubkey": jwk},
        "tee-evidence": {"primary_evidence": primary, "additional_evidence": ""},
    }


def transfer_v0(
    c: httpx.Client, t: Target, v: Variant, pki: sim.DevPki, w: Workload
) -> tuple[dict[str, Any], float]:
    """One /kbs/v0 transfer (auth, attest, resource over the session cookie)."""
    nonce, cookie = _v0_auth(c, "/kbs/v0/auth", t.tee)
    jwk = w.jwk(v.workload)
    q0 = time.thread_time()
    quote = make_quote(pki, t.tee, binding.v0_report_data(nonce, jwk, "", "sha384"))
    qcpu = time.thread_time() - q0
    body = _v0_attest_body(t.tee, base64.b64encode(quote).decode(), nonce, jwk)
    _ok(c.post("/kbs/v0/attest", json=body, headers=cookie), "attest")
    r = _ok(c.get(f"/kbs/v0/resource/{t.resources[v.key]}", headers=cookie), "resource")
    return r.json(), qcpu


TRANSFER: dict[str, Flow] = {"v1": transfer_v1, "v0": transfer_v0}


# The peer (bench/floor_app.py): the same requests, bodies of the same size and shape, a quote made once.


def peer_v1(
    c: httpx.Client, t: Target, v: Variant, pki: sim.DevPki, w: Workload
) -> tuple[dict[str, Any], float]:
    """A /kbs/v1 transfer's requests against the framework floor (no quote made: 0 quote CPU)."""
    r = _ok(c.post("/floor/nonce"), "nonce")
    nonce_b64 = r.json()["nonce"]["val"]
    att = r.headers["Attestation-Type"]
    body = {"quote": t.quotes["v1"], "nonce": {"val": nonce_b64}, "user_data": w.spki_b64}
    r = _ok(c.post("/floor/echo", json=body, headers={"Attestation-Type": att}), "echo")
    return r.json(), 0.0


def peer_v0(
    c: httpx.Client, t: Target, v: Variant, pki: sim.DevPki, w: Workload
) -> tuple[dict[str, Any], float]:
    """A /kbs/v0 transfer's requests against the framework floor."""
    nonce, cookie = _v0_auth(c, "/floor/auth", t.tee)
    body = _v0_attest_body(t.tee, t.quotes["v0"], nonce, w.jwk(v.workload))
    _ok(c.post("/floor/attest", json=body, headers=cookie), "attest")
    r = _ok(c.get("/floor/resource", headers=cookie), "resource")
    return r.json(), 0.0


PEER_TRANSFER: dict[str, Flow] = {"v1": peer_v1, "v0": peer_v0}
#: the real flow's responses, in order, -> the floor app's endpoint that answers them
PEER_ENDPOINTS = {"v1": ("nonce", "echo"), "v0": ("auth", "attest", "resource")}


def open_result(v: Variant, body: dict[str, Any], w: Workload) -> bytes:
    """The workload side: unwrap what the server sent (done on warm-up transfers only)."""
    if v.protocol == "v1":
        return unwrap.secl_unwrap(
            base64.b64decode(body["wrapped_key"]), base64.b64decode(body["wrapped_swk"]), w.rsa_priv
        )
    return unwrap.jwe_unwrap(body, w.rsa_priv if v.workload == "rsa3072" else w.ec_priv)


def check_released(v: Variant, plain: bytes, aes_secret: bytes) -> None:
    """The key the workload opened is the one set up: the imported AES key, or an RSA-3072 PKCS#8 key."""
    if v.key == "aes" and plain != aes_secret:
        raise RuntimeError(f"{v.name}: the released key is not the imported one")
    if v.key == "rsa":
        key = serialization.load_der_private_key(plain, password=None)
        if not isinstance(key, rsa.RSAPrivateKey) or key.key_size != 3072:
            raise RuntimeError(f"{v.name}: the released key is not an RSA-3072 PKCS#8 key")


def peer_responses(captured: dict[str, list[httpx.Request | httpx.Response]]) -> dict[str, dict[str, Any]]:
    """The floor app's fixed answers: the real server's, per protocol in request order (see
    :data:`PEER_ENDPOINTS`), with the headers a client reads (the cookie's path made the floor's)."""
    out: dict[str, dict[str, Any]] = {}
    for proto, exchanges in captured.items():
        responses = [r for r in exchanges if isinstance(r, httpx.Response)]
        for name, r in zip(PEER_ENDPOINTS[proto], responses, strict=True):
            headers = {k: r.headers[k] for k in ("Attestation-Type", "Set-Cookie") if k in r.headers}
            if "Set-Cookie" in headers:
                headers["Set-Cookie"] = headers["Set-Cookie"].replace("Path=/kbs/v0", "Path=/floor")
            out[name] = {"body": r.text, "headers": headers}
    return out


def sizes(exchanges: Sequence[httpx.Request | httpx.Response]) -> dict[str, list[int]]:
    """Body bytes of one transfer's requests and responses, in order."""
    return {
        "request_bytes": [len(x.content) for x in exchanges if isinstance(x, httpx.Request)],
        "response_bytes": [len(x.content) for x in exchanges if isinstance(x, httpx.Response)],
    }
