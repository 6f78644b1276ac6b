"""The SecL key-transfer policy that admits the simulator's default evidence. NOT FOR PRODUCTION.

One definition for the tests and the benchmarks, so that a change to the simulator's defaults
changes the policy that admits them in one place.
"""

from __future__ import annotations

from typing import Any, Final

from keybroker.tee.sim import quote

__all__ = ["SIM_ISVPRODID", "SIM_ISVSVN", "sim_policy"]

#: The ISVPRODID and ISVSVN that the simulated SGX workload of the tests and benchmarks reports
#: (``sgx_quote(..., isvprodid=SIM_ISVPRODID, isvsvn=SIM_ISVSVN)``).
SIM_ISVPRODID: Final = 7
SIM_ISVSVN: Final = 2


def sim_policy(tee: str, *, enforce_tcb_upto_date: bool | None = True) -> dict[str, Any]:
    """A fresh SecL policy body (``attestation_type`` ``SGX`` or ``TDX``) whose attributes are the
    simulator's defaults, with ``allow_simulated``.

    ``enforce_tcb_upto_date``: the value of that attribute; None leaves it out (the SecL default,
    false). ``tee`` is ``"sgx"`` or ``"tdx"``; anything else is a :class:`ValueError`.
    """
    if tee == "tdx":
        attributes: dict[str, Any] = {
            "mrsignerseam": [quote.DEFAULT_MRSIGNERSEAM.hex()],
            "mrseam": [quote.DEFAULT_MRSEAM.hex()],
            "seamsvn": quote.DEFAULT_SEAMSVN,
            "mrtd": [quote.DEFAULT_MRTD.hex()],
            "rtmr0": quote.DEFAULT_RTMRS[0].hex(),
        }
    elif tee == "sgx":
        attributes = {
            "mrsigner": [quote.DEFAULT_MRSIGNER.hex()],
            "isvprodid": [SIM_ISVPRODID],
            "mrenclave": [quote.DEFAULT_MRENCLAVE.hex()],
            "isvsvn": SIM_ISVSVN,
        }
    else:
        raise ValueError(f"no simulator policy for TEE {tee!r} (sgx or tdx)")
    if enforce_tcb_upto_date is not None:
        attributes["enforce_tcb_upto_date"] = enforce_tcb_upto_date
    return {"attestation_type": [tee.upper()], tee: {"attributes": attributes}, "allow_simulated": True}
