"""Intel PCCS-compatible collateral endpoints (``/sgx/certification/v4``, ``/tdx/certification/v4``).

DCAP hosts (``sgx_default_qcnl.conf`` ``"pccs_url"``) and other keybroker instances
(``keybroker collateral fetch``) read TCB Info, QE/QVE identities and CRLs here, answered from
the newest stored piece (Intel-rooted before dev-rooted). Bodies are what Intel PCS returns, byte
for byte where it is signed; issuer chains travel URL-encoded in the PCS headers.

Reads are unauthenticated, as in Intel PCS and PCCS: the collateral is public, the same for every
platform of an FMSPC, and signed by Intel, so a reader learns nothing secret and a forger gains
nothing (every consumer verifies the signatures up to the Intel SGX Root CA). Writing collateral
is a local operator action (``keybroker collateral import/fetch``), never an HTTP call here.

CRLs: ``encoding=der`` gives DER (Intel PCS, QCNL ``collateral_version`` 3.1); without it, the hex of the
DER, as Intel PCCS answers and QCNL's default ``collateral_version`` 3.0 expects.

Errors: 400 for bad parameters (``fmspc`` must be 12 hex digits, ``ca`` processor or platform,
``encoding`` der, ``update`` early or standard); 404 naming what was asked and what is cached.
"""

from __future__ import annotations

import re
import urllib.parse
from typing import Annotated, Final, Literal

from fastapi import APIRouter, Depends, Query, Response

from keybroker.api.body import StrictRoute
from keybroker.api.deps import services
from keybroker.api.schema import responses
from keybroker.api.services import Services
from keybroker.collateral.items import Item, Kind
from keybroker.collateral.store import CollateralStore
from keybroker.errors import CollateralNotFound, InvalidInput

router = APIRouter(tags=["pccs"], route_class=StrictRoute)
Svc = Annotated[Services, Depends(services)]

_FMSPC: Final = re.compile(r"[0-9A-Fa-f]{12}")
TCB_CHAIN: Final = "TCB-Info-Issuer-Chain"
IDENTITY_CHAIN: Final = "SGX-Enclave-Identity-Issuer-Chain"
CRL_CHAIN: Final = "SGX-PCK-CRL-Issuer-Chain"
_CACHE: Final = "public, max-age=3600"

UpdateQ = Annotated[
    str | None,
    Query(
        pattern="^(early|standard)$", description="early or standard (keybroker serves the newest it holds)"
    ),
]
FmspcQ = Annotated[str, Query(pattern="^[0-9A-Fa-f]{12}$", description="12 hex digits")]
CaQ = Annotated[
    str,
    Query(
        pattern="^([Pp][Rr][Oo][Cc][Ee][Ss][Ss][Oo][Rr]|[Pp][Ll][Aa][Tt][Ff][Oo][Rr][Mm])$",
        description="processor or platform",
    ),
]
EncodingQ = Annotated[
    str | None, Query(pattern="^[Dd][Ee][Rr]$", description="der: DER; absent: the hex of the DER")
]
UriQ = Annotated[str, Query(min_length=1, max_length=2048, description="a CRL distribution point")]

_SIGNED_JSON: Final = {"application/json": {"schema": {"type": "object"}}}
_CRL: Final = {
    "application/pkix-crl": {"schema": {"type": "string", "format": "binary"}},
    "text/plain": {"schema": {"type": "string", "pattern": "^([0-9a-f]{2})+$"}},
}
#: Intel's signed JSON (TCB Info, enclave identities), the issuer chain URL-encoded in a header.
_JSON_ANSWERS = {200: {"description": "as Intel PCS answers", "content": _SIGNED_JSON}, **responses(404)}
#: A CRL: DER (``application/pkix-crl``) or the hex of the DER (``text/plain``).
_CRL_ANSWERS = {200: {"description": "the CRL", "content": _CRL}, **responses(404)}


def _store(svc: Services) -> CollateralStore:
    return CollateralStore(svc.db)


def _update(update: str | None) -> None:
    if update is not None and update not in ("early", "standard"):
        raise InvalidInput(f"update {update!r}: expected early or standard", field="update")


def _fmspc(fmspc: str | None) -> str:
    if fmspc is None:
        raise InvalidInput("fmspc is required (12 hex digits)", field="fmspc")
    if not _FMSPC.fullmatch(fmspc):
        raise InvalidInput(f"fmspc {fmspc!r}: expected 12 hex digits", field="fmspc")
    return fmspc.upper()


def _chain_header(item: Item) -> str:
    assert item.issuer_chain is not None
    return urllib.parse.quote(item.issuer_chain, safe="")


def _json(item: Item, header: str) -> Response:
    return Response(
        item.pcs_body(),
        media_type="application/json",
        headers={header: _chain_header(item), "Cache-Control": _CACHE},
    )


def _tcb(svc: Services, tee: Literal["sgx", "tdx"], fmspc: str | None, update: str | None) -> Response:
    _update(update)
    want = _fmspc(fmspc)
    store = _store(svc)
    item = store.newest("tcb_info", tee=tee, fmspc=want)
    if item is None:
        raise store.not_found("tcb_info", tee=tee, fmspc=want)
    return _json(item, TCB_CHAIN)


def _identity(svc: Services, kind: Kind, tee: Literal["sgx", "tdx"], update: str | None) -> Response:
    _update(update)
    store = _store(svc)
    item = store.newest(kind, tee=tee)
    if item is None:
        raise store.not_found(kind, tee=tee)
    return _json(item, IDENTITY_CHAIN)


@router.get(
    "/sgx/certification/v4/tcb",
    summary="SGX TCB Info for an FMSPC",
    response_class=Response,
    responses=_JSON_ANSWERS,
)
def sgx_tcb(svc: Svc, fmspc: FmspcQ, update: UpdateQ = None) -> Response:
    return _tcb(svc, "sgx", fmspc, update)


@router.get(
    "/tdx/certification/v4/tcb",
    summary="TDX TCB Info for an FMSPC",
    response_class=Response,
    responses=_JSON_ANSWERS,
)
def tdx_tcb(svc: Svc, fmspc: FmspcQ, update: UpdateQ = None) -> Response:
    return _tcb(svc, "tdx", fmspc, update)


@router.get(
    "/sgx/certification/v4/qe/identity",
    summary="SGX QE identity",
    response_class=Response,
    responses=_JSON_ANSWERS,
)
def sgx_qe_identity(svc: Svc, update: UpdateQ = None) -> Response:
    return _identity(svc, "qe_identity", "sgx", update)


@router.get(
    "/tdx/certification/v4/qe/identity",
    summary="TDX QE (TD_QE) identity",
    response_class=Response,
    responses=_JSON_ANSWERS,
)
def tdx_qe_identity(svc: Svc, update: UpdateQ = None) -> Response:
    return _identity(svc, "qe_identity", "tdx", update)


@router.get(
    "/sgx/certification/v4/qve/identity",
    summary="SGX QVE identity (404 unless stored)",
    response_class=Response,
    responses=_JSON_ANSWERS,
)
def sgx_qve_identity(svc: Svc, update: UpdateQ = None) -> Response:
    return _identity(svc, "qve_identity", "sgx", update)


@router.get(
    "/sgx/certification/v4/pckcrl",
    summary="PCK CRL of the Processor or Platform CA",
    response_class=Response,
    responses=_CRL_ANSWERS,
)
def pckcrl(svc: Svc, ca: CaQ, encoding: EncodingQ = None) -> Response:
    """DER with ``encoding=der`` (as Intel PCS and QCNL ``collateral_version`` 3.1 ask); without it,
    the hex of the DER, as Intel PCCS answers and QCNL's default ``collateral_version`` 3.0 expects
    (Intel PCS would answer PEM there)."""
    if ca is None or ca.lower() not in ("processor", "platform"):
        raise InvalidInput(f"ca {ca!r}: expected processor or platform", field="ca")
    _encoding(encoding)
    want = ca.lower()
    store = _store(svc)
    item = store.newest("pck_crl", pck_ca=want)
    if item is None:
        raise store.not_found("pck_crl", pck_ca=want)
    return _crl(item, encoding, {CRL_CHAIN: _chain_header(item)})


@router.get(
    "/sgx/certification/v4/rootcacrl",
    summary="Intel SGX Root CA CRL",
    response_class=Response,
    responses=_CRL_ANSWERS,
)
def rootcacrl(svc: Svc, encoding: EncodingQ = None) -> Response:
    """The hex of the DER, as Intel PCCS serves it; DER with ``encoding=der``."""
    _encoding(encoding)
    return _crl(_root_crl(svc), encoding, {})


@router.get(
    "/sgx/certification/v4/crl",
    summary="A CRL by distribution point (QCNL collateral_version 3.1)",
    response_class=Response,
    responses={
        200: {
            "description": "the CRL (DER)",
            "content": {"application/pkix-crl": _CRL["application/pkix-crl"]},
        },
        **responses(404),
    },
)
def crl(svc: Svc, uri: UriQ) -> Response:
    """QCNL 3.1 asks for the root CA CRL by the distribution point in the root-issued certificates;
    keybroker serves its newest root CA CRL (DER) for such a URI and 404 for any other."""
    if not uri:
        raise InvalidInput("uri is required (a CRL distribution point)", field="uri")
    path = urllib.parse.urlsplit(uri).path
    if not (path.endswith("RootCA.der") or path.endswith("/rootcacrl")):
        raise CollateralNotFound(
            f"keybroker serves the root CA CRL by distribution point, not {uri!r}; "
            "PCK CRLs are at /sgx/certification/v4/pckcrl?ca=processor|platform",
            asked={"uri": uri},
        )
    return _crl(_root_crl(svc), "der", {})


def _encoding(encoding: str | None) -> None:
    if encoding is not None and encoding.lower() != "der":
        raise InvalidInput(
            f"encoding {encoding!r}: only der is supported (hex when absent)", field="encoding"
        )


def _root_crl(svc: Services) -> Item:
    store = _store(svc)
    item = store.newest("root_ca_crl")
    if item is None:
        raise store.not_found("root_ca_crl")
    return item


def _crl(item: Item, encoding: str | None, headers: dict[str, str]) -> Response:
    assert item.crl_der is not None
    headers = {**headers, "Cache-Control": _CACHE}
    if encoding is not None:
        return Response(item.crl_der, media_type="application/pkix-crl", headers=headers)
    return Response(item.crl_der.hex(), media_type="text/plain", headers=headers)
