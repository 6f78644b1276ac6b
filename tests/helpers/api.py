"""Small helpers for API tests."""

from __future__ import annotations

from typing import Any

from keybroker.api.services import Services

SGX_POLICY: dict[str, Any] = {
    "attestation_type": ["SGX"],
    "sgx": {
        "attributes": {
            "mrsigner": ["83d719e77deaca1470f6baf62a4d774303c899db69020f9c70ee1dfc08c7ce9e"],
            "isvprodid": [0],
            "mrenclave": [],
            "isvsvn": 1,
            "client_permissions": ["nginx", "USA"],
            "enforce_tcb_upto_date": False,
        }
    },
}

TDX_POLICY: dict[str, Any] = {
    "attestation_type": ["TDX"],
    "tdx": {
        "attributes": {
            "mrsignerseam": ["0" * 96],
            "mrseam": [
                "5b38e33a6487958b72c3c12a938eaa5e3fd4510c51aeeab58c7d5ecee41d7c436489d6c8e4f92f160b7cad34207b00c1"
            ],
            "seamsvn": 0,
            "mrtd": ["a" * 96],
            "rtmr0": "b" * 96,
            "enforce_tcb_upto_date": True,
        }
    },
}


def token_headers(
    services: Services, *permissions: str, client_permissions: tuple[str, ...] = ()
) -> dict[str, str]:
    token = services.tokens.mint("tester", list(permissions), client_permissions=client_permissions)
    return {"Authorization": "Bearer " + token}


def unwrap_v1(transfer_response: dict[str, Any], workload_private: Any) -> bytes:
    """Open a /kbs/v1 transfer response as the workload client does."""
    import base64

    from keybroker.client.unwrap import secl_unwrap

    return secl_unwrap(
        base64.b64decode(transfer_response["wrapped_key"]),
        base64.b64decode(transfer_response["wrapped_swk"]),
        workload_private,
    )
