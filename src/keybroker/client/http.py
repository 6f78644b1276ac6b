"""HTTPS to the key broker: verified TLS, retries with backoff, problem documents to errors.

TLS is always verified; there is no switch to turn it off.

- ``ca_file``: the chain must verify to the CA(s) in the file, and the host name must match.
- ``ca_sha384`` alone (the fingerprint ``keybroker serve`` prints): one TLS handshake, sending no
  data, collects the certificates the server presents; the one whose SHA-384 (of its DER) equals the
  pin becomes the *only* trust anchor, and every request then verifies the chain to it (partial
  chains allowed, so a pinned leaf or intermediate works) and the host name, as with a CA file.
  A pinned CA that an attacker merely copies into its own chain gains nothing: its leaf must still
  be signed by the pinned key.
- both: the chain verifies with the CA file and the pin must name a certificate of that file or the
  server's (verified) leaf.
- neither: the system trust store.

Retries: network errors and 5xx are retried with exponential backoff and jitter; 4xx never (a
denial does not change by asking again, and a PIN-like lockout must not be provoked). Calls that
spend something on the server (a nonce) pass ``retry=False`` and the protocol retries the whole
exchange instead.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import socket
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit

import httpx
from cryptography import x509

from keybroker.client.errors import Denied, TlsVerificationFailed, Unreachable
from keybroker.errors import InvalidInput

log = logging.getLogger("keybroker.client")

SHA384_SIZE = 48


def parse_sha384_pin(text: str) -> bytes:
    """A SHA-384 fingerprint as 96 hex digits, colons allowed (``openssl x509 -fingerprint``)."""
    cleaned = text.strip().replace(":", "").lower()
    if cleaned.startswith("sha384="):
        cleaned = cleaned.removeprefix("sha384=")
    try:
        raw = bytes.fromhex(cleaned)
    except ValueError:
        raise InvalidInput("--ca-sha384 is not hex", field="ca_sha384") from None
    if len(raw) != SHA384_SIZE:
        raise InvalidInput(
            f"--ca-sha384 must be {SHA384_SIZE} bytes ({2 * SHA384_SIZE} hex digits), got {len(raw)}",
            field="ca_sha384",
        )
    return raw


def sha384_hex(der: bytes) -> str:
    return hashlib.sha384(der).hexdigest()


@dataclass(frozen=True)
class TlsConfig:
    """How the server's certificate is verified. None: not used (neither: the system trust store)."""

    ca_file: Path | None = None
    ca_sha384: bytes | None = None

    def describe(self) -> str:
        parts = []
        if self.ca_file is not None:
            parts.append(f"CA file {self.ca_file}")
        if self.ca_sha384 is not None:
            parts.append(f"SHA-384 pin {self.ca_sha384.hex()[:16]}...")
        return " and ".join(parts) or "the system trust store"


@dataclass(frozen=True)
class RetryPolicy:
    """``attempts`` in all (1: no retry); the n-th wait is ``base_delay * 2**n`` (at most
    ``max_delay``) times a random factor in [0.5, 1]."""

    attempts: int = 4
    base_delay: float = 0.5
    max_delay: float = 8.0

    def delay(self, attempt: int) -> float:
        return min(self.max_delay, self.base_delay * (2.0**attempt)) * random.uniform(0.5, 1.0)  # noqa: S311


def _der_chain(tls: ssl.SSLSocket) -> list[bytes]:
    """The certificates the peer presented, leaf first (the whole chain where Python exposes it)."""
    getter: Callable[[], Any] | None = getattr(tls, "get_unverified_chain", None)  # Python >= 3.13
    if getter is None:
        getter = getattr(getattr(tls, "_sslobj", None), "get_unverified_chain", None)  # 3.10 - 3.12
    if getter is not None:
        chain = getter() or []
        return [c if isinstance(c, bytes) else c.public_bytes(ssl._ssl.ENCODING_DER) for c in chain]  # type: ignore[attr-defined]
    leaf = tls.getpeercert(binary_form=True)
    return [leaf] if leaf else []


def presented_chain(
    host: str, port: int, timeout: float, context: ssl.SSLContext | None = None
) -> list[bytes]:
    """One handshake, no application data: the DER certificates the server presents.

    Without ``context`` the handshake does not verify anything: the caller compares the result with
    a pin and builds a verifying context from the match; nothing is ever sent over this connection.
    """
    if context is None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    with (
        socket.create_connection((host, port), timeout=timeout) as sock,
        context.wrap_socket(sock, server_hostname=host) as tls,
    ):
        return _der_chain(tls)


def _anchored_context(anchor_der: bytes) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cadata=anchor_der)
    ctx.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
    return ctx


def _ca_file_certs(path: Path) -> list[bytes]:
    from cryptography.hazmat.primitives import serialization

    try:
        certs = x509.load_pem_x509_certificates(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise InvalidInput(
            f"--ca-file {path}: no PEM certificate can be read ({exc})", field="ca_file"
        ) from None
    return [c.public_bytes(serialization.Encoding.DER) for c in certs]


def build_ssl_context(host: str, port: int, tls: TlsConfig, timeout: float) -> ssl.SSLContext:
    """The verifying context for ``tls`` (see the module docstring). May connect once (pins)."""
    if tls.ca_file is not None:
        ca_certs = _ca_file_certs(tls.ca_file)
        ctx = ssl.create_default_context(cafile=str(tls.ca_file))
        if tls.ca_sha384 is None or any(hashlib.sha384(c).digest() == tls.ca_sha384 for c in ca_certs):
            return ctx
        chain = _handshake(host, port, timeout, ctx)
        if chain and hashlib.sha384(chain[0]).digest() == tls.ca_sha384:
            return ctx
        raise TlsVerificationFailed(
            f"the SHA-384 pin {tls.ca_sha384.hex()} names neither a certificate of --ca-file {tls.ca_file} "
            "nor the server's certificate"
        )
    if tls.ca_sha384 is not None:
        chain = _handshake(host, port, timeout, None)
        for der in chain:
            if hashlib.sha384(der).digest() == tls.ca_sha384:
                return _anchored_context(der)
        seen = ", ".join(sha384_hex(d)[:16] + "..." for d in chain) or "none"
        raise TlsVerificationFailed(
            f"no certificate {host}:{port} presented has the pinned SHA-384 {tls.ca_sha384.hex()} "
            f"(presented: {seen})"
        )
    return ssl.create_default_context()


def _handshake(host: str, port: int, timeout: float, ctx: ssl.SSLContext | None) -> list[bytes]:
    try:
        return presented_chain(host, port, timeout, ctx)
    except ssl.SSLCertVerificationError as exc:
        raise TlsVerificationFailed(f"{host}:{port}: {exc.verify_message or exc}") from None
    except (OSError, ssl.SSLError) as exc:
        raise httpx.ConnectError(f"TLS handshake with {host}:{port} failed: {exc}") from None


def _tls_verification_error(exc: BaseException) -> ssl.SSLCertVerificationError | None:
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        if isinstance(cur, ssl.SSLCertVerificationError):
            return cur
        seen.add(id(cur))
        cur = cur.__cause__ or cur.__context__
    return None


def problem_of(resp: httpx.Response) -> dict[str, Any]:
    try:
        body = resp.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        return {"detail": resp.text[:300] or resp.reason_phrase}
    return body if isinstance(body, dict) else {"detail": str(body)[:300]}


def denial(resp: httpx.Response) -> Denied:
    problem = problem_of(resp)
    reasons = problem.get("reasons")
    return Denied(
        str(problem.get("detail") or resp.reason_phrase),
        status=resp.status_code,
        reasons=[str(r) for r in reasons] if isinstance(reasons, list) else [],
        problem={k: v for k, v in problem.items() if k in ("check", "field", "title", "type")},
    )


class Transport:
    """A connection to one broker. ``http_transport`` replaces the network (tests)."""

    def __init__(
        self,
        base_url: str,
        tls: TlsConfig | None = None,
        *,
        token: str | None = None,
        timeout: float = 30.0,
        retry: RetryPolicy | None = None,
        sleep: Callable[[float], None] = time.sleep,
        http_transport: httpx.BaseTransport | None = None,
    ) -> None:
        parts = urlsplit(base_url)
        if parts.scheme != "https" or not parts.hostname:
            raise InvalidInput(
                f"--server {base_url!r} must be an https:// URL (keybroker-client never talks plain HTTP)",
                field="server",
            )
        self.base_url = base_url.rstrip("/")
        self.host = parts.hostname
        self.port = parts.port or 443
        self.tls = tls or TlsConfig()
        self.retry = retry or RetryPolicy()
        self._token = token
        self._timeout = timeout
        self._sleep = sleep
        self._http_transport = http_transport
        self._client: httpx.Client | None = None

    def _ensure_client(self) -> httpx.Client:
        if self._client is None:
            if self._http_transport is not None:
                self._client = httpx.Client(
                    base_url=self.base_url, transport=self._http_transport, timeout=self._timeout
                )
            else:
                ctx = build_ssl_context(self.host, self.port, self.tls, self._timeout)
                self._client = httpx.Client(base_url=self.base_url, verify=ctx, timeout=self._timeout)
        return self._client

    def request(
        self,
        method: str,
        path: str,
        *,
        json_body: Any = None,
        content: bytes | None = None,
        headers: dict[str, str] | None = None,
        retry: bool = True,
        auth: bool = True,
    ) -> httpx.Response:
        """The response of a 2xx; :class:`Denied` for a 4xx; :class:`Unreachable` when the network
        or 5xx answers outlast the retries (``retry=False``: one attempt)."""
        hdrs = dict(headers or {})
        if auth and self._token:
            hdrs["Authorization"] = f"Bearer {self._token}"
        attempts = max(1, self.retry.attempts) if retry else 1
        last = ""
        for attempt in range(attempts):
            try:
                resp = self._ensure_client().request(
                    method, path, json=json_body, content=content, headers=hdrs
                )
            except httpx.TransportError as exc:
                bad_cert = _tls_verification_error(exc)
                if bad_cert is not None:
                    raise TlsVerificationFailed(
                        f"{self.host}:{self.port}: {bad_cert.verify_message or bad_cert} "
                        f"(verified against {self.tls.describe()})"
                    ) from None
                last = f"{type(exc).__name__}: {exc}"
            else:
                if resp.status_code < 400:
                    log.debug("%s %s -> %d", method, path, resp.status_code)
                    return resp
                if resp.status_code < 500:
                    raise denial(resp)
                last = f"{resp.status_code} {problem_of(resp).get('detail') or resp.reason_phrase}"
            if attempt + 1 < attempts:
                wait = self.retry.delay(attempt)
                log.warning("%s %s: %s; retrying in %.1fs", method, path, last, wait)
                self._sleep(wait)
        raise Unreachable(
            f"{method} {self.base_url}{path}: {last}"
            + (f" (after {attempts} attempts)" if attempts > 1 else "")
        )

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def __enter__(self) -> Transport:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
