"""Fetch collateral from Intel PCS v4 or any PCCS (another keybroker included).

``GET /{sgx,tdx}/certification/v4/tcb?fmspc=``, ``.../qe/identity``, ``/sgx/certification/v4/qve/identity``,
``/sgx/certification/v4/pckcrl?ca=processor|platform&encoding=der`` and ``/sgx/certification/v4/rootcacrl``,
with the issuer chains from the ``TCB-Info-Issuer-Chain``, ``SGX-Enclave-Identity-Issuer-Chain`` and
``SGX-PCK-CRL-Issuer-Chain`` headers. Intel PCS has no ``rootcacrl``: on 404 the root CA CRL comes
from the CRL distribution point of the TCB Signing certificate (as PCCS does).

Nothing fetched is trusted for being fetched: every response becomes an :class:`Item` only after
its chain and signature verify (``items``), and must be what was asked for (TEE, FMSPC, CA).

Network errors and 5xx are retried with exponential backoff (honouring ``Retry-After``); 4xx are
answers, never retried. TLS verification is always on (a CA file may replace the system store);
plain ``http://`` is accepted for loopback addresses only.
"""

from __future__ import annotations

import ipaddress
import json
import ssl
import time
import urllib.parse
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Final, Literal, Self

import httpx
from cryptography import x509

from keybroker.collateral.importers import body_item, crl_from_wire, header_chain
from keybroker.collateral.items import Item, TrustedRoots, pck_crl_item, root_ca_crl_item
from keybroker.errors import (
    BackendUnavailable,
    CollateralError,
    CollateralNotFound,
    InvalidInput,
    UntrustedCollateralRoot,
)

__all__ = [
    "INTEL_PCS",
    "FetchPlan",
    "PcsClient",
    "UpstreamUnavailable",
    "fetch_collateral",
]

INTEL_PCS: Final = "https://api.trustedservices.intel.com"
_API_SUFFIXES: Final = ("/sgx/certification/v4", "/tdx/certification/v4")
_MAX_RESPONSE: Final = 8 * 1024 * 1024


class UpstreamUnavailable(BackendUnavailable):
    """The PCS/PCCS kept failing (5xx) through every retry."""

    title = "Collateral source unavailable"
    exit_code = 3


def service_root(url: str, api_suffixes: Sequence[str]) -> str:
    """The service root of ``--from``: https (plain http to loopback only), no query or fragment,
    any of ``api_suffixes`` (an API path the user may have pasted) removed."""
    parsed = urllib.parse.urlsplit(url.strip())
    if parsed.scheme not in ("https", "http") or not parsed.hostname:
        raise InvalidInput(f"--from {url!r}: expected an https:// URL", field="from")
    if parsed.scheme == "http":
        host = parsed.hostname
        try:
            loopback = ipaddress.ip_address(host).is_loopback
        except ValueError:
            loopback = host == "localhost"
        if not loopback:
            raise InvalidInput(f"--from {url!r}: plain http is for loopback only; use https", field="from")
    if parsed.query or parsed.fragment:
        raise InvalidInput(f"--from {url!r}: no query or fragment, please", field="from")
    path = parsed.path.rstrip("/")
    for suffix in api_suffixes:
        if path.endswith(suffix):
            path = path[: -len(suffix)]
    return urllib.parse.urlunsplit((parsed.scheme, parsed.netloc, path, "", ""))


def problem_detail(resp: httpx.Response) -> str:
    """The server's own explanation (a keybroker problem's ``detail``), else a snippet."""
    try:
        doc = resp.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        return resp.text[:200].strip() or resp.reason_phrase
    if isinstance(doc, dict) and isinstance(doc.get("detail"), str):
        return str(doc["detail"])
    return resp.text[:200].strip() or resp.reason_phrase


def service_client(
    base_url: str, *, ca_file: Path | None, timeout: float, transport: httpx.BaseTransport | None
) -> httpx.Client:
    """The HTTP client for a collateral service at ``base_url`` (a :func:`service_root`): the system's
    trust store, or only ``ca_file``'s CAs (an unreadable file is ``InvalidInput``); redirects not
    followed."""
    verify: Any = True
    if ca_file is not None:
        try:
            verify = ssl.create_default_context(cafile=str(ca_file))
        except (OSError, ssl.SSLError) as exc:
            raise InvalidInput(f"--ca-file {ca_file}: {exc}", field="ca_file") from None
    return httpx.Client(
        base_url=base_url,
        verify=verify,
        timeout=timeout,
        transport=transport,
        follow_redirects=False,
    )


class ServiceClient:
    """What the PCS and KDS clients share: the service root, their :func:`service_client` (closed by
    :meth:`close` or at the end of a ``with`` block), the retry settings and the request count."""

    def __init__(
        self,
        root: str,
        *,
        ca_file: Path | None,
        retries: int,
        backoff: float,
        max_backoff: float,
        timeout: float,
        sleep: Callable[[float], None],
        transport: httpx.BaseTransport | None,
    ) -> None:
        self.base_url = root
        self._client = service_client(root, ca_file=ca_file, timeout=timeout, transport=transport)
        self._retries = retries
        self._backoff = backoff
        self._max_backoff = max_backoff
        self._sleep = sleep
        self._timeout = timeout
        self.requests = 0

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


class PcsClient(ServiceClient):
    """A small PCS/PCCS v4 client with retries. ``sleep`` is injectable (tests count, not wait)."""

    def __init__(
        self,
        base_url: str,
        *,
        ca_file: Path | None = None,
        retries: int = 3,
        backoff: float = 0.5,
        max_backoff: float = 8.0,
        timeout: float = 30.0,
        sleep: Callable[[float], None] = time.sleep,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        if retries < 0 or backoff < 0:
            raise InvalidInput("retries and backoff must not be negative", field="retries")
        super().__init__(
            service_root(base_url, _API_SUFFIXES),  # https://host:8081, qcnl-style .../v4/
            ca_file=ca_file,
            retries=retries,
            backoff=backoff,
            max_backoff=max_backoff,
            timeout=timeout,
            sleep=sleep,
            transport=transport,
        )

    def _delay(self, attempt: int, resp: httpx.Response | None) -> float:
        delay = min(self._max_backoff, self._backoff * (1 << attempt))
        retry_after = resp.headers.get("retry-after", "") if resp is not None else ""
        if retry_after.isdigit():
            delay = max(delay, min(float(retry_after), self._max_backoff))
        return delay

    def get(
        self, path: str, params: dict[str, str] | None = None, *, client: httpx.Client | None = None
    ) -> httpx.Response:
        """GET with retries on network errors and 5xx. 404 -> CollateralNotFound (with the server's
        explanation); other 4xx -> CollateralError; 5xx after the last retry -> UpstreamUnavailable;
        a network error after the last retry is re-raised (``httpx.TransportError``)."""
        http = client or self._client
        url = str(http.base_url.join(path)) if client is None else path
        for attempt in range(self._retries + 1):
            resp: httpx.Response | None = None
            self.requests += 1
            try:
                resp = http.get(path, params=params)
            except httpx.TransportError:
                if attempt == self._retries:
                    raise
            else:
                if resp.status_code < 400:
                    if len(resp.content) > _MAX_RESPONSE:
                        raise CollateralError(f"{url}: response larger than {_MAX_RESPONSE} bytes")
                    return resp
                if resp.status_code < 500:
                    detail = problem_detail(resp)
                    asked = f"{url}{'?' + urllib.parse.urlencode(params) if params else ''}"
                    if resp.status_code == 404:
                        raise CollateralNotFound(f"{asked}: 404 {detail}")
                    raise CollateralError(f"{asked}: {resp.status_code} {detail}")
                if attempt == self._retries:
                    raise UpstreamUnavailable(
                        f"{url}: {resp.status_code} {problem_detail(resp)} (after {attempt + 1} attempts)"
                    )
            self._sleep(self._delay(attempt, resp))
        raise AssertionError("unreachable")  # pragma: no cover

    def get_external(self, url: str) -> httpx.Response:
        """A certificate-profile URL (the root CA CRL distribution point), system trust store, retried."""
        with httpx.Client(timeout=self._timeout, follow_redirects=True) as http:
            return self.get(url, client=http)


def _chain_header(resp: httpx.Response, name: str, what: str) -> str:
    value = resp.headers.get(name)
    if value is None:
        raise CollateralError(f"{what}: the response has no {name} header")
    return header_chain(value, f"{what} {name}")


Tee = Literal["sgx", "tdx"]


@dataclass(frozen=True)
class FetchPlan:
    """The requests ``fetch_collateral`` makes, for a progress bar: (description, ...)."""

    fmspc: str
    tees: tuple[Tee, ...]
    steps: tuple[str, ...] = field(init=False)

    def __post_init__(self) -> None:
        steps = [f"{tee.upper()} TCB Info {self.fmspc}" for tee in self.tees]
        steps += [f"{'TD_QE' if tee == 'tdx' else 'QE'} identity" for tee in self.tees]
        if "sgx" in self.tees:
            steps.append("QVE identity")
        steps += ["PCK CRL processor", "PCK CRL platform", "root CA CRL"]
        object.__setattr__(self, "steps", tuple(steps))


def _root_crl_url(item: Item) -> str | None:
    """The CRL distribution point of the signer certificate (issued by the root): the root CA CRL."""
    assert item.issuer_chain is not None
    signer = x509.load_pem_x509_certificate(item.issuer_chain.encode("ascii"))
    try:
        points = signer.extensions.get_extension_for_class(x509.CRLDistributionPoints).value
    except x509.ExtensionNotFound:
        return None
    for point in points:
        for name in point.full_name or ():
            if isinstance(name, x509.UniformResourceIdentifier) and name.value.startswith("https://"):
                return str(name.value)
    return None


class _Gather:
    """Pieces fetched for one FMSPC, all under one root (the *expected* root, set by the TCB Info):
    a piece of another root, or of a root that is not trusted, is skipped with a note."""

    def __init__(self, roots: TrustedRoots) -> None:
        self.roots = roots
        self.root: str | None = None
        self.root_name = ""
        self.items: list[Item] = []
        self.notes: list[str] = []
        #: The first piece refused for its root: the CLI suggests ``--trust-root`` from it.
        self.untrusted: UntrustedCollateralRoot | None = None

    @staticmethod
    def _describe(item: Item) -> str:
        if item.root_kind == "intel":
            return "the Intel SGX Root CA"
        return f"the dev root {item.root_sha256[:16]}…"

    def take(self, make: Callable[[], Item], name: str) -> Item | None:
        """Verify a piece (``make``); keep it if it is of the expected root, else note why not."""
        try:
            item = make()
        except UntrustedCollateralRoot as exc:
            self.untrusted = self.untrusted or exc
            self.notes.append(f"{name} skipped: {exc.detail}")
            return None
        if self.root is not None and item.root_sha256 != self.root:
            self.notes.append(
                f"{name} skipped: it chains to {self._describe(item)}, the TCB Info to {self.root_name} "
                "(collateral of two roots is never stored together)"
            )
            return None
        self.items.append(item)
        return item

    def expect(self, tcb_infos: Sequence[Item]) -> list[Item]:
        """Fix the expected root: Intel's if a TCB Info chains to it, else the first's; the TCB
        Info of another root is dropped with a note. Returns the TCB Info kept."""
        chosen = next((i for i in tcb_infos if i.root_kind == "intel"), tcb_infos[0])
        self.root, self.root_name = chosen.root_sha256, self._describe(chosen)
        kept = []
        for item in tcb_infos:
            if item.root_sha256 == self.root:
                kept.append(item)
            else:
                self.items.remove(item)
                self.notes.append(
                    f"{item.label} skipped: it chains to {self._describe(item)}, the {chosen.label} to "
                    f"{self.root_name} (collateral of two roots is never stored together)"
                )
        return kept


def fetch_collateral(
    client: PcsClient,
    *,
    fmspc: str,
    tees: Sequence[Tee],
    roots: TrustedRoots,
    step: Callable[[str], None] = lambda _: None,
) -> tuple[list[Item], list[str]]:
    """Fetch and verify everything needed for quotes of ``fmspc`` (one or both TEEs).

    Returns (items, notes). Everything returned chains to one root: the TCB Info's (Intel's when
    TCB Info of several roots is served). A piece of another root, or of a root that is not
    trusted, is skipped with a note, as is a 404 for one TEE's TCB Info, for one PCK CA's CRL or
    for the QVE identity. A TEE left without its QE identity is dropped (with a note); if no TEE
    is left, or no PCK CRL or root CA CRL of that root, ``CollateralNotFound`` naming every note.
    A piece that is malformed, badly signed or not what was asked for is a ``CollateralError``.
    """
    fmspc = fmspc.upper()
    got = _Gather(roots)
    found: dict[Tee, Item] = {}
    for tee in tees:
        step(f"{tee.upper()} TCB Info {fmspc}")
        try:
            resp = client.get(f"/{tee}/certification/v4/tcb", {"fmspc": fmspc})
        except CollateralNotFound as exc:
            if len(tees) == 1:
                raise
            got.notes.append(f"no {tee.upper()} TCB Info: {exc.detail}")
            continue
        chain = _chain_header(resp, "TCB-Info-Issuer-Chain", "TCB Info")
        item: Item | None
        if len(tees) == 1:  # the one thing asked for: an untrusted root is the answer, not a note
            item = body_item(resp.text, chain, roots, "TCB Info")
            got.items.append(item)
        else:
            item = got.take(
                partial(body_item, resp.text, chain, roots, "TCB Info"), f"{tee.upper()} TCB Info"
            )
        if item is None:
            continue
        if item.kind != "tcb_info" or item.tee != tee or item.fmspc != fmspc:
            raise CollateralError(f"asked for {tee.upper()} TCB Info of FMSPC {fmspc}, got {item.label}")
        found[tee] = item
    if not found:
        detail = f"{client.base_url} has no TCB Info for FMSPC {fmspc} of a trusted root: " + "; ".join(
            got.notes
        )
        if got.untrusted is not None:
            raise UntrustedCollateralRoot(
                detail, root_sha256=got.untrusted.root_sha256, root_name=got.untrusted.root_name
            )
        raise CollateralNotFound(detail)
    found = {i.tee: i for i in got.expect(list(found.values())) if i.tee is not None}
    for tee in tees:
        name = "TD_QE identity" if tee == "tdx" else "QE identity"
        step(name)
        if tee not in found:
            continue
        identity: Item | None = None
        try:
            resp = client.get(f"/{tee}/certification/v4/qe/identity")
        except CollateralNotFound as exc:
            got.notes.append(f"no {name}: {exc.detail}")
        else:
            chain = _chain_header(resp, "SGX-Enclave-Identity-Issuer-Chain", name)
            identity = got.take(partial(body_item, resp.text, chain, roots, name), name)
            if identity is not None and (identity.kind != "qe_identity" or identity.tee != tee):
                raise CollateralError(f"asked for the {name}, got {identity.label}")
        if identity is None:
            tcb = found.pop(tee)
            got.items.remove(tcb)
            got.notes.append(f"{tcb.label} not stored: no {name} of the same root")
    if not found:
        raise CollateralNotFound(
            f"{client.base_url} has no complete collateral for FMSPC {fmspc} under one root: "
            + "; ".join(got.notes)
        )
    if "sgx" in tees:
        step("QVE identity")
        try:
            resp = client.get("/sgx/certification/v4/qve/identity")
        except CollateralNotFound as exc:
            got.notes.append(f"no QVE identity: {exc.detail}")
        else:
            chain = _chain_header(resp, "SGX-Enclave-Identity-Issuer-Chain", "QVE identity")
            qve = got.take(partial(body_item, resp.text, chain, roots, "QVE identity"), "QVE identity")
            if qve is not None and qve.kind != "qve_identity":
                raise CollateralError(f"asked for the QVE identity, got {qve.label}")
    crls = 0
    for ca in ("processor", "platform"):
        step(f"PCK CRL {ca}")
        try:
            resp = client.get("/sgx/certification/v4/pckcrl", {"ca": ca, "encoding": "der"})
        except CollateralNotFound as exc:
            got.notes.append(f"no PCK CRL for the {ca} CA: {exc.detail}")
            continue
        chain = _chain_header(resp, "SGX-PCK-CRL-Issuer-Chain", f"PCK CRL {ca}")
        der = crl_from_wire(resp.content, f"PCK CRL {ca}")
        crl = got.take(partial(pck_crl_item, der, chain, roots), f"PCK CRL {ca}")
        if crl is None:
            continue
        if crl.pck_ca != ca:
            raise CollateralError(f"asked for the {ca} CA's PCK CRL, got the {crl.pck_ca} CA's")
        crls += 1
    if not crls:
        raise CollateralNotFound(
            f"{client.base_url} has no PCK CRL under the root of the TCB Info: " + "; ".join(got.notes)
        )
    step("root CA CRL")
    try:
        resp = client.get("/sgx/certification/v4/rootcacrl")
    except CollateralNotFound:
        url = _root_crl_url(next(iter(found.values())))
        if url is None:
            raise
        got.notes.append(f"root CA CRL from its distribution point {url}")
        resp = client.get_external(url)
    root_der = crl_from_wire(resp.content, "root CA CRL")
    if got.take(partial(root_ca_crl_item, root_der, roots), "root CA CRL") is None:
        raise CollateralNotFound(
            f"{client.base_url} has no root CA CRL of the root of the TCB Info: " + "; ".join(got.notes)
        )
    return got.items, got.notes
