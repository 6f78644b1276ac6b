"""A remote attestation service for ``/kbs/v1`` background checks: another keybroker's
``/attestation/v1`` (or anything that speaks it), over HTTPS with a pinned CA.

The broker asks it for the challenge nonce (``POST /attestation/v1/nonce``) and hands that nonce to
the workload; the workload binds it as usual (REPORTDATA = SHA-512(nonce || user_data)); the broker
forwards the evidence (``POST /attestation/v1/attest``) and gets an EAR back, which it verifies
against the remote service's JWKS (``trust.attestation_services``) like any remote token. The
broker still records and uses up the nonce itself, per key, and still decides with the key's own
policy: the remote service only verifies the evidence.
"""

from __future__ import annotations

import base64
import binascii
import ssl
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from keybroker.errors import (
    BackendUnavailable,
    CollateralNotFound,
    EvidenceParseError,
    Forbidden,
    InvalidInput,
    KeybrokerError,
    VerificationError,
)

NONCE_SIZE = 32


class RemoteAttestation:
    def __init__(self, url: str, *, ca_file: Path | None = None, timeout: float = 10.0) -> None:
        if not url.startswith("https://"):
            raise InvalidInput(
                "attestation.remote_url must be an https:// URL", field="attestation.remote_url"
            )
        self.url = url.rstrip("/")
        try:
            verify: ssl.SSLContext = (
                ssl.create_default_context(cafile=str(ca_file))
                if ca_file is not None
                else ssl.create_default_context()
            )
        except (OSError, ssl.SSLError) as exc:
            raise InvalidInput(
                f"attestation.remote_ca_file: cannot load {ca_file}: {exc}",
                field="attestation.remote_ca_file",
            ) from None
        self._client = httpx.Client(base_url=self.url, verify=verify, timeout=timeout)

    def close(self) -> None:
        self._client.close()

    def nonce(self) -> tuple[bytes, datetime]:
        """A fresh nonce of the remote service and its expiry."""
        body = self._post("/attestation/v1/nonce", None)
        try:
            value = base64.b64decode(str(body["val"]), validate=True)
            expires = datetime.fromtimestamp(int(body["exp"]), UTC)
        except (KeyError, TypeError, ValueError, binascii.Error, OverflowError):
            raise self._unavailable("its nonce answer is not {val, iat, exp}") from None
        if len(value) != NONCE_SIZE:
            raise self._unavailable(f"its nonce is {len(value)} bytes, not {NONCE_SIZE}")
        return value, expires

    def attest(self, tee: str, evidence: bytes, nonce: bytes, user_data: bytes) -> str:
        """The remote service's EAR for ``evidence`` (verified there, REPORTDATA checked there)."""
        body = self._post(
            "/attestation/v1/attest",
            {
                "tee": tee,
                "evidence": base64.b64encode(evidence).decode(),
                "nonce": base64.b64encode(nonce).decode(),
                "user_data": base64.b64encode(user_data).decode(),
            },
        )
        token = body.get("token")
        if not isinstance(token, str):
            raise self._unavailable("its attest answer carries no token")
        return token

    def _post(self, path: str, payload: dict[str, Any] | None) -> dict[str, Any]:
        try:
            resp = self._client.post(path, json=payload) if payload is not None else self._client.post(path)
        except httpx.HTTPError as exc:
            raise self._unavailable(type(exc).__name__) from None
        try:
            body = resp.json()
        except ValueError:
            body = None
        if not isinstance(body, dict):
            raise self._unavailable(f"HTTP {resp.status_code} without a JSON object")
        if resp.status_code == 200:
            return body
        raise self._refusal(resp.status_code, body)

    def _refusal(self, status: int, body: dict[str, Any]) -> KeybrokerError:
        """The remote service's refusal as our own error: the evidence's fault stays a 4xx."""
        detail = f"the remote attestation service refused the evidence: {str(body.get('detail', ''))[:500]}"
        if status == 400 and isinstance(body.get("check"), str):
            return VerificationError(detail, check=str(body["check"]))
        if status == 400:
            return EvidenceParseError(detail, field=str(body.get("field") or "evidence"))
        if status in (401, 403):
            return Forbidden(detail, reasons=[detail])
        if status == 404:
            return CollateralNotFound(detail)
        return self._unavailable(f"HTTP {status}: {str(body.get('detail', ''))[:300]}")

    def _unavailable(self, why: str) -> BackendUnavailable:
        return BackendUnavailable(f"the remote attestation service at {self.url} is unavailable: {why}")
