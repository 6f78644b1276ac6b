"""Fetch SEV-SNP collateral from AMD's KDS or any KDS-compatible service (another keybroker too).

``GET /{vcek,vlek}/v1/{P}/cert_chain`` (PEM), ``/{vcek,vlek}/v1/{P}/crl`` (DER) and
``/vcek/v1/{P}/{hwid}?blSPL=&teeSPL=&snpSPL=&ucodeSPL=[&fmcSPL=]`` (DER) for the VCEKs that reports
name. Nothing fetched is trusted for being fetched: every answer becomes an item only once it
verifies (``collateral.kds``) and is what was asked for (product, side, chip, TCB).

AMD's KDS rate-limits per client: a 429 is retried after its ``Retry-After`` (seconds or an HTTP
date), up to ``max_retry_after``; a longer wait is an error that says how long, rather than a
silent stall. Network errors and 5xx are retried with exponential backoff; other 4xx are answers,
never retried. VCEKs already cached are not asked for again (a VCEK never changes for a chip and
TCB), and each chain and CRL is asked for once per run. TLS verification is always on (a CA file
may replace the system store); plain ``http://`` is accepted for loopback addresses only.
"""

from __future__ import annotations

import email.utils
import time
import urllib.parse
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Final

import httpx
from cryptography import x509

from keybroker.collateral.fetch import ServiceClient, problem_detail, service_root
from keybroker.collateral.kds import (
    KDS_URL,
    ReportRef,
    SnpItem,
    chain_items,
    chain_path,
    crl_item,
    crl_path,
    label,
    vcek_item,
    vcek_params,
    vcek_path,
)
from keybroker.errors import BackendUnavailable, CollateralError, CollateralNotFound, InvalidInput
from keybroker.tee.snp.abi import Product, SigningKey

__all__ = [
    "KDS_URL",
    "KdsClient",
    "KdsUnavailable",
    "SnpFetchPlan",
    "fetch_snp_collateral",
]

_MAX_RESPONSE: Final = 1024 * 1024
_API_SUFFIXES: Final = ("/vcek/v1", "/vlek/v1")


class KdsUnavailable(BackendUnavailable):
    """The KDS kept failing (5xx, or rate-limiting for longer than we wait)."""

    title = "Collateral source unavailable"
    exit_code = 3


def retry_after_seconds(value: str | None, now: datetime) -> float | None:
    """``Retry-After`` (RFC 9110 §10.2.3): delay-seconds or an HTTP-date; None when absent or bad."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        return None
    return max(0.0, (when - now).total_seconds())


class KdsClient(ServiceClient):
    """A small KDS client with retries. ``sleep`` and ``clock`` are injectable (tests count, not wait)."""

    def __init__(
        self,
        base_url: str = KDS_URL,
        *,
        ca_file: Path | None = None,
        retries: int = 3,
        backoff: float = 0.5,
        max_backoff: float = 8.0,
        max_retry_after: float = 120.0,
        timeout: float = 30.0,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        if retries < 0 or backoff < 0 or max_retry_after < 0:
            raise InvalidInput("retries, backoff and max_retry_after must not be negative", field="retries")
        super().__init__(
            service_root(base_url, _API_SUFFIXES),  # kdsintf.amd.com, a keybroker, or .../vcek/v1
            ca_file=ca_file,
            retries=retries,
            backoff=backoff,
            max_backoff=max_backoff,
            timeout=timeout,
            sleep=sleep,
            transport=transport,
        )
        self._max_retry_after = max_retry_after
        self._clock = clock

    def get(self, path: str, params: dict[str, str] | None = None) -> bytes:
        """GET with retries (network errors, 5xx, 429). 404 -> ``CollateralNotFound`` with the
        server's explanation; other 4xx -> ``CollateralError``; 5xx or 429 after the last retry,
        or a ``Retry-After`` beyond ``max_retry_after`` -> ``KdsUnavailable``; a network error
        after the last retry is re-raised (``httpx.TransportError``)."""
        asked = f"{self.base_url}{path}{'?' + urllib.parse.urlencode(params) if params else ''}"
        for attempt in range(self._retries + 1):
            resp: httpx.Response | None = None
            self.requests += 1
            try:
                resp = self._client.get(path, params=params)
            except httpx.TransportError:
                if attempt == self._retries:
                    raise
            else:
                status = resp.status_code
                if status < 300:
                    if len(resp.content) > _MAX_RESPONSE:
                        raise CollateralError(f"{asked}: response larger than {_MAX_RESPONSE} bytes")
                    return resp.content
                if status == 404:
                    raise CollateralNotFound(f"{asked}: 404 {problem_detail(resp)}")
                if status < 500 and status != 429:
                    raise CollateralError(f"{asked}: {status} {problem_detail(resp)}")
                if attempt == self._retries:
                    what = "rate limited" if status == 429 else problem_detail(resp)
                    raise KdsUnavailable(f"{asked}: {status} {what} (after {attempt + 1} attempts)")
            delay = min(self._max_backoff, self._backoff * (1 << attempt))
            if resp is not None:
                wait = retry_after_seconds(resp.headers.get("retry-after"), self._clock())
                if wait is not None:
                    if wait > self._max_retry_after:
                        raise KdsUnavailable(
                            f"{asked}: {resp.status_code}, Retry-After {wait:.0f} s, longer than the "
                            f"{self._max_retry_after:.0f} s this fetch waits; try again later"
                        )
                    delay = max(delay, wait)
            self._sleep(delay)
        raise AssertionError("unreachable")  # pragma: no cover


@dataclass(frozen=True)
class SnpFetchPlan:
    """The requests ``fetch_snp_collateral`` may make, for a progress bar."""

    products: tuple[Product, ...]
    reports: tuple[ReportRef, ...]
    #: (product, side) pairs whose chain and CRL are fetched, in order.
    sides: tuple[tuple[Product, SigningKey], ...] = field(init=False)
    #: The distinct VCEKs the reports name.
    vceks: tuple[ReportRef, ...] = field(init=False)
    steps: tuple[str, ...] = field(init=False)

    def __post_init__(self) -> None:
        sides: list[tuple[Product, SigningKey]] = []
        for product in self.products:
            sides += [(product, "vcek"), (product, "vlek")]
        for ref in self.reports:
            if (ref.product, ref.signing_key) not in sides:
                sides.append((ref.product, ref.signing_key))
        vceks: dict[tuple[Product, bytes, bytes], ReportRef] = {}
        for ref in self.reports:
            if ref.hwid is not None:
                vceks.setdefault((ref.product, ref.hwid, ref.tcb), ref)
        steps = []
        for product, side in sides:
            steps += [
                label("snp_cert_chain", side, product, None, None),
                label("snp_crl", side, product, None, None),
            ]
        steps += [ref.label for ref in vceks.values()]
        object.__setattr__(self, "sides", tuple(sides))
        object.__setattr__(self, "vceks", tuple(vceks.values()))
        object.__setattr__(self, "steps", tuple(steps))


def fetch_snp_collateral(
    client: KdsClient,
    plan: SnpFetchPlan,
    *,
    dev_roots: Sequence[x509.Certificate] = (),
    have_vcek: Callable[[Product, bytes, bytes], bool] = lambda *_: False,
    known_chains: Sequence[SnpItem] = (),
    step: Callable[[str], None] = lambda _: None,
) -> tuple[list[SnpItem], list[str]]:
    """Fetch and verify the plan's chains, CRLs and VCEKs. Returns (items, notes).

    A 404 for a chain or CRL is a note (another keybroker may hold only some products); a 404 for
    a VCEK a report names is ``CollateralNotFound`` (it is what was asked for), as is a run that
    found nothing. Anything that does not verify, or is not what was asked for, is a
    ``CollateralError`` (``UntrustedCollateralRoot`` for a root that is not trusted): the caller
    stores nothing of such a run. A VCEK is verified through the chain fetched for its product,
    else a ``known_chains`` one (the store's), else AMD's shipped ASK.
    """
    items: list[SnpItem] = []
    notes: list[str] = []
    for product, side in plan.sides:
        what = label("snp_cert_chain", side, product, None, None)
        step(what)
        path = chain_path(product, side)
        try:
            body = client.get(path)
        except CollateralNotFound as exc:
            notes.append(f"no {what}: {exc.detail}")
        else:
            got = chain_items(body, dev_roots=dev_roots, where=f"{client.base_url}{path}")
            if [(i.product, i.signing_key) for i in got] != [(product, side)]:
                raise CollateralError(
                    f"{client.base_url}{path}: asked for the {what} chain, got {', '.join(i.label for i in got)}"
                )
            items += got
        what = label("snp_crl", side, product, None, None)
        step(what)
        path = crl_path(product, side)
        try:
            body = client.get(path)
        except CollateralNotFound as exc:
            notes.append(f"no {what}: {exc.detail}")
            continue
        crl = crl_item(body, signing_key=side, dev_roots=dev_roots, where=f"{client.base_url}{path}")
        if crl.product != product:
            raise CollateralError(
                f"{client.base_url}{path}: asked for the {what}, got ARK-{crl.product}'s CRL"
            )
        items.append(crl)
    for ref in plan.vceks:
        assert ref.hwid is not None
        step(ref.label)
        if have_vcek(ref.product, ref.hwid, ref.tcb):
            notes.append(f"{ref.label}: already cached, not fetched again")
            continue
        path = vcek_path(ref.product, ref.hwid)
        params = vcek_params(ref.product, ref.tcb)
        body = client.get(path, params)
        where = f"{client.base_url}{path}"
        fetched_chains = [i for i in items if i.kind == "snp_cert_chain" and i.product == ref.product]
        vcek = vcek_item(body, chains=[*fetched_chains, *known_chains], dev_roots=dev_roots, where=where)
        if (vcek.product, vcek.hwid, vcek.tcb) != (ref.product, ref.hwid, ref.tcb):
            raise CollateralError(f"{where}: asked for the {ref.label}, got the {vcek.label}")
        items.append(vcek)
    if not items and not any("already cached" in n for n in notes):
        raise CollateralNotFound(f"{client.base_url} has none of it: " + "; ".join(notes))
    return items, notes
