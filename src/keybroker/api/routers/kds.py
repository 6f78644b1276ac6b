"""AMD KDS-compatible endpoints (``/vcek/v1/...``, ``/vlek/v1/...``): keybroker as a KDS cache.

SEV-SNP guests and other verifiers (``go-sev-guest``, ``snpguest``, Trustee, another keybroker's
``collateral fetch --snp``) read VCEKs, ASK/ASVK chains and ARK CRLs here, answered from the KDS
cache: the newest stored piece, AMD-rooted before dev-rooted. Bodies are AMD's: a VCEK as DER
(``application/pkix-cert``), a chain as PEM (intermediate then ARK, ``application/x-pem-file``),
a CRL as DER (``application/pkix-crl``).

Reads are unauthenticated, as at AMD's KDS: the certificates and CRLs are public and signed by
AMD, so a reader learns nothing secret and a forger gains nothing (every consumer verifies them up
to AMD's ARK). A VCEK is found only by whoever knows the chip's hwID and TCB; nothing here lists
hwIDs (a 404 names only the TCBs cached for the chip asked about). Writing is a local operator
action (``keybroker collateral import/fetch``), never an HTTP call here.

Errors: 400 for a bad product, hwID (hex of 64 bytes; 8 on Turin), SPL (0-255; ``fmcSPL`` on
Turin only), a repeated or unknown parameter; 404 naming what was asked and what is cached.
"""

from __future__ import annotations

from typing import Annotated, Final, Literal

from fastapi import APIRouter, Depends, Path, Query, Request, Response

from keybroker.api.body import StrictRoute
from keybroker.api.deps import services
from keybroker.api.schema import responses
from keybroker.api.services import Services
from keybroker.collateral.kds import parse_hwid, tcb_from_spls
from keybroker.collateral.kds_store import KdsStore
from keybroker.errors import InvalidInput
from keybroker.tee.snp.abi import Product, SigningKey

router = APIRouter(tags=["kds"], route_class=StrictRoute)
Svc = Annotated[Services, Depends(services)]

_CACHE: Final = "public, max-age=3600"
PEM: Final = "application/x-pem-file"
CERT: Final = "application/pkix-cert"
CRL: Final = "application/pkix-crl"

ProductP = Annotated[
    Literal["Milan", "Genoa", "Turin"], Path(description="the SEV-SNP product line: Milan, Genoa or Turin")
]
HwidP = Annotated[
    str,
    Path(
        description="the chip's hwID: CHIP_ID as hex, 64 bytes (128 digits); on Turin its first 8 bytes (16 digits)",
        json_schema_extra={"pattern": "^([0-9a-fA-F]{16}|[0-9a-fA-F]{128})$"},
    ),
]


def _spl(name: str, description: str) -> object:
    return Query(alias=name, ge=0, le=255, description=description)


BlQ = Annotated[int | None, _spl("blSPL", "boot loader SPL (absent: 0)")]
TeeQ = Annotated[int | None, _spl("teeSPL", "PSP OS (TEE) SPL (absent: 0)")]
SnpQ = Annotated[int | None, _spl("snpSPL", "SNP firmware SPL (absent: 0)")]
UcodeQ = Annotated[int | None, _spl("ucodeSPL", "microcode SPL (absent: 0)")]
FmcQ = Annotated[int | None, _spl("fmcSPL", "FMC SPL, Turin only (absent: 0)")]

_PEM_ANSWER: Final = {
    200: {
        "description": "the intermediate (ASK or ASVK) then the ARK, PEM",
        "content": {PEM: {"schema": {"type": "string"}}},
    },
    **responses(400, 404),
}
_CRL_ANSWER: Final = {
    200: {
        "description": "the ARK's CRL, DER",
        "content": {CRL: {"schema": {"type": "string", "format": "binary"}}},
    },
    **responses(400, 404),
}
_VCEK_ANSWER: Final = {
    200: {
        "description": "the VCEK, DER",
        "content": {CERT: {"schema": {"type": "string", "format": "binary"}}},
    },
    **responses(400, 404),
}


def _store(svc: Services) -> KdsStore:
    return KdsStore(svc.db)


def _chain(svc: Services, product: Product, side: SigningKey) -> Response:
    store = _store(svc)
    item = store.newest("snp_cert_chain", product=product, signing_key=side)
    if item is None:
        raise store.not_found("snp_cert_chain", product=product, signing_key=side)
    return Response(item.content, media_type=PEM, headers={"Cache-Control": _CACHE})


def _crl(svc: Services, product: Product, side: SigningKey) -> Response:
    store = _store(svc)
    item = store.newest("snp_crl", product=product, signing_key=side)
    if item is None:
        raise store.not_found("snp_crl", product=product, signing_key=side)
    return Response(item.content, media_type=CRL, headers={"Cache-Control": _CACHE})


@router.get(
    "/vcek/v1/{product}/cert_chain",
    summary="ASK and ARK of a product (PEM)",
    response_class=Response,
    responses=_PEM_ANSWER,
)
def vcek_cert_chain(svc: Svc, product: ProductP) -> Response:
    return _chain(svc, product, "vcek")


@router.get(
    "/vcek/v1/{product}/crl",
    summary="The ARK's CRL for ASKs (DER)",
    response_class=Response,
    responses=_CRL_ANSWER,
)
def vcek_crl(svc: Svc, product: ProductP) -> Response:
    return _crl(svc, product, "vcek")


@router.get(
    "/vlek/v1/{product}/cert_chain",
    summary="ASVK and ARK of a product (PEM)",
    response_class=Response,
    responses=_PEM_ANSWER,
)
def vlek_cert_chain(svc: Svc, product: ProductP) -> Response:
    return _chain(svc, product, "vlek")


@router.get(
    "/vlek/v1/{product}/crl",
    summary="The ARK's CRL for ASVKs (DER)",
    response_class=Response,
    responses=_CRL_ANSWER,
)
def vlek_crl(svc: Svc, product: ProductP) -> Response:
    return _crl(svc, product, "vlek")


@router.get(
    "/vcek/v1/{product}/{hwid}",
    summary="The VCEK of a chip at a TCB (DER)",
    response_class=Response,
    responses=_VCEK_ANSWER,
)
def vcek(
    request: Request,
    svc: Svc,
    product: ProductP,
    hwid: HwidP,
    bl_spl: BlQ = None,
    tee_spl: TeeQ = None,
    snp_spl: SnpQ = None,
    ucode_spl: UcodeQ = None,
    fmc_spl: FmcQ = None,
) -> Response:
    """As AMD's KDS: SPLs left out are zero; ``fmcSPL`` is Turin's only."""
    for name in ("blSPL", "teeSPL", "snpSPL", "ucodeSPL", "fmcSPL"):
        if len(request.query_params.getlist(name)) > 1:
            raise InvalidInput(f"{name} is given more than once", field=name)
    chip = parse_hwid(product, hwid)
    tcb = tcb_from_spls(
        product,
        {"blSPL": bl_spl, "teeSPL": tee_spl, "snpSPL": snp_spl, "ucodeSPL": ucode_spl, "fmcSPL": fmc_spl},
    )
    store = _store(svc)
    item = store.newest("snp_vcek", product=product, signing_key="vcek", hwid=chip, tcb=tcb)
    if item is None:
        raise store.not_found("snp_vcek", product=product, signing_key="vcek", hwid=chip, tcb=tcb)
    return Response(item.content, media_type=CERT, headers={"Cache-Control": _CACHE})
