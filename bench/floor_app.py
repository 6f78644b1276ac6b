"""The framework floor: the least a FastAPI app under uvicorn over HTTPS can do per key transfer.

``bench/transfer.py`` runs this beside ``keybroker serve`` as its peer: same TLS certificate and key,
same ``uvicorn.run`` options (``log_config=None``, ``access_log=False``, one process; uvicorn picks
httptools and uvloop by itself, as it does for keybroker), pinned to the same CPU. Each endpoint reads
the request body (and parses it as JSON when there is one) and answers a fixed, pre-encoded response:
no database, no cryptography, no validation, no thread pool. What keybroker spends per transfer above
this app's server CPU is keybroker's own work.

Endpoints (one per request of the real flows; the responses default to realistic sizes, and the bench
replaces them with the real server's answers captured during its warm-up, ``--responses FILE``):

- ``POST /floor/nonce``: like the /kbs/v1 challenge (empty body -> nonce, ``Attestation-Type``);
- ``POST /floor/echo``: like the /kbs/v1 transfer (quote + nonce + SPKI -> wrapped key);
- ``POST /floor/auth``, ``POST /floor/attest``, ``GET /floor/resource``: like /kbs/v0 auth (nonce and
  session cookie), attest (quote -> token) and resource (a JWE of ~1 KB);
- ``GET /healthz``: the same as keybroker's.

Run: ``python bench/floor_app.py --port 8443 --certfile server.pem --keyfile server-key.pem``.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
from pathlib import Path
from typing import Any

import uvicorn
from fastapi import FastAPI, Request, Response


def _b64(n: int) -> str:
    return base64.b64encode(os.urandom(n)).decode()


def _b64url(n: int) -> str:
    return base64.urlsafe_b64encode(os.urandom(n)).decode().rstrip("=")


#: name -> {"body": JSON text, "headers": {name: value}}; sizes like the real answers (AES-256 key,
#: RSA-3072 workload key, TDX).
DEFAULT_RESPONSES: dict[str, dict[str, Any]] = {
    "nonce": {
        "body": json.dumps({"nonce": {"val": _b64(32), "iat": 1_800_000_000, "exp": 1_800_000_300}}),
        "headers": {"Attestation-Type": "TDX"},
    },
    "echo": {"body": json.dumps({"wrapped_key": _b64(60), "wrapped_swk": _b64(384)})},
    "auth": {
        "body": json.dumps({"nonce": _b64(32), "extra-params": ""}),
        "headers": {
            "Set-Cookie": f"kbs-session-id={_b64url(32)}; HttpOnly; Max-Age=300; Path=/kbs/v0; "
            "SameSite=strict; Secure"
        },
    },
    "attest": {"body": json.dumps({"token": ".".join((_b64url(60), _b64url(1400), _b64url(96)))})},
    "resource": {
        "body": json.dumps(
            {
                "protected": _b64url(90),
                "encrypted_key": _b64url(384),
                "iv": _b64url(12),
                "ciphertext": _b64url(32),
                "tag": _b64url(16),
            }
        )
    },
}


def create_app(responses: dict[str, dict[str, Any]] | None = None) -> FastAPI:
    fixed = {**DEFAULT_RESPONSES, **(responses or {})}
    bodies = {name: r["body"].encode() for name, r in fixed.items()}
    headers = {name: dict(r.get("headers") or {}) for name, r in fixed.items()}
    app = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)

    async def read(request: Request) -> None:
        raw = await request.body()
        if raw.strip():
            json.loads(raw)

    def answer(name: str) -> Response:
        return Response(bodies[name], media_type="application/json", headers=headers[name])

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/floor/nonce")
    async def nonce(request: Request) -> Response:
        await read(request)
        return answer("nonce")

    @app.post("/floor/echo")
    async def echo(request: Request) -> Response:
        await read(request)
        return answer("echo")

    @app.post("/floor/auth")
    async def auth(request: Request) -> Response:
        await read(request)
        return answer("auth")

    @app.post("/floor/attest")
    async def attest(request: Request) -> Response:
        await read(request)
        return answer("attest")

    @app.get("/floor/resource")
    async def resource() -> Response:
        return answer("resource")

    return app


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--certfile", help="TLS certificate chain (PEM); plain HTTP without it")
    parser.add_argument("--keyfile", help="TLS private key (PEM)")
    parser.add_argument("--responses", type=Path, help='JSON: {name: {"body": text, "headers": {...}}}')
    args = parser.parse_args(argv)
    responses = json.loads(args.responses.read_text()) if args.responses else None
    ssl: dict[str, str] = {}
    if args.certfile:
        ssl = {"ssl_certfile": args.certfile, "ssl_keyfile": args.keyfile}
    # as ``keybroker serve`` calls it
    uvicorn.run(
        create_app(responses), host=args.host, port=args.port, log_config=None, access_log=False, **ssl
    )


if __name__ == "__main__":
    main()
