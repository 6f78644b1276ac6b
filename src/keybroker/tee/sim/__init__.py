"""Development TEE simulator: real-format SGX/TDX quotes signed by a dev PKI. NOT FOR PRODUCTION.

The dev PKI (:class:`DevPki`) has the shape of Intel's: a root CA, PCK Processor and
Platform CAs, a TCB signing certificate, CRLs, PCK certificates with the SGX extension,
signed TCB Info v3 (SGX and TDX) and QE Identity v2 (QE and TD_QE), and a collateral file
per TEE in dcap-qvl's ``QuoteCollateralV3`` JSON form. :func:`sgx_quote` and
:func:`tdx_quote` build quotes that a DCAP verifier accepts only when the dev root is
trusted explicitly (``dev_roots``); verified claims then carry ``sim: true``.

Typical use::

    pki = DevPki.create(Path("dev-pki"))            # or DevPki.load(...)
    quote = tdx_quote(pki, report_data=rd, mrtd=mrtd, tcb="uptodate")
    collateral = pki.collateral_json("tdx")
    # verify_quote(quote, collateral, at=now, dev_roots=[pki.root_cert])
"""

from __future__ import annotations

from keybroker.tee.sim.pki import (
    PLATFORM_SGX,
    PLATFORM_TDX,
    QE_IDENTITY,
    ROOT_CA_CN,
    SGX_TCB,
    TCB_CHOICES,
    TD_QE_IDENTITY,
    TDX_TCB,
    DevPki,
    SimPlatform,
    SimQeIdentity,
    SimTcbLevel,
    TcbChoice,
)
from keybroker.tee.sim.policy import SIM_ISVPRODID, SIM_ISVSVN, sim_policy
from keybroker.tee.sim.quote import (
    DEFAULT_MRENCLAVE,
    DEFAULT_MRSEAM,
    DEFAULT_MRSIGNER,
    DEFAULT_MRSIGNERSEAM,
    DEFAULT_MRTD,
    DEFAULT_RTMRS,
    DEFAULT_SEAMSVN,
    sgx_quote,
    tdx_quote,
)

__all__ = [
    "DEFAULT_MRENCLAVE",
    "DEFAULT_MRSEAM",
    "DEFAULT_MRSIGNER",
    "DEFAULT_MRSIGNERSEAM",
    "DEFAULT_MRTD",
    "DEFAULT_RTMRS",
    "DEFAULT_SEAMSVN",
    "PLATFORM_SGX",
    "PLATFORM_TDX",
    "QE_IDENTITY",
    "ROOT_CA_CN",
    "SIM_ISVPRODID",
    "SIM_ISVSVN",
    "SGX_TCB",
    "TCB_CHOICES",
    "TDX_TCB",
    "TD_QE_IDENTITY",
    "DevPki",
    "SimPlatform",
    "SimQeIdentity",
    "SimTcbLevel",
    "TcbChoice",
    "sgx_quote",
    "sim_policy",
    "tdx_quote",
]
