"""Backend down or slow: fail fast with 503 naming the backend, list no partial key, recover."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from tests.helpers import kmip as kmip_helper
from tests.helpers import openbao, softhsm

from .conftest import Broker, keystore_config, make_broker


def _outage(request: pytest.FixtureRequest, name: str) -> tuple[Callable[[], None], Callable[[], None], str]:
    """(stop, start, the name the error must carry)."""
    if name == "vault-tls":
        bao: openbao.BaoServer = request.getfixturevalue("bao_tls")
        return bao.stop, lambda: bao.start() and None, "vault"
    if name == "kmip":
        k: kmip_helper.KmipServer = request.getfixturevalue("kmip_server")
        return k.stop, lambda: k.start() and None, "kmip"
    h: softhsm.SoftHsm = request.getfixturevalue("hsm")
    return h.pull, h.plug, "pkcs11"


@pytest.mark.parametrize("name", ["vault-tls", "kmip", "pkcs11"])
def test_backend_down_then_back(request: pytest.FixtureRequest, tmp_path: Path, name: str) -> None:
    b = make_broker(name, tmp_path / "data", keystore_config(name, request))
    stop, start, backend = _outage(request, name)
    first = b.create({"algorithm": "AES", "key_length": 256}).json()["key_information"]["id"]
    stop()
    try:
        t0 = time.monotonic()
        r = b.create({"algorithm": "EC", "curve_type": "secp256r1"}, label="during-outage")
        elapsed = time.monotonic() - t0
        assert r.status_code == 503, r.text
        problem = r.json()
        assert problem["title"] == "Backend unavailable" and backend in problem["detail"]
        assert problem["backend"] == backend
        assert elapsed < 6, f"took {elapsed:.1f}s"
        assert b.listed() == {first}  # no partial key
        ready = b.client.get("/readyz")
        assert ready.status_code == 503 and backend in ready.json()["detail"]
    finally:
        start()
    # recovers by itself: the old key is still there and new keys work
    r = b.create({"algorithm": "AES", "key_length": 128})
    assert r.status_code == 201, r.text
    assert b.client.get("/readyz").status_code == 200
    with b.services.db.session() as s:
        from keybroker.store.models import Key

        row = s.get(Key, first)
        assert row is not None
        from cryptography.hazmat.primitives.asymmetric import rsa

        recipient = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key()
        assert b.services.keystore.wrap_for_transfer(s, first, row.backend_ref, recipient, b"").wrapped_key
    b.services.db.dispose()


@pytest.fixture
def tarpit() -> Iterator[int]:
    """A loopback port that accepts connections and never answers (a hung backend)."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(16)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        srv.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(srv.accept()[0])
            except OSError:
                continue

    t = threading.Thread(target=accept, daemon=True)
    t.start()
    yield int(srv.getsockname()[1])
    stop.set()
    t.join()
    for c in held:
        c.close()
    srv.close()


@pytest.mark.parametrize("name", ["vault-dev", "kmip"])
def test_hung_backend_times_out(
    request: pytest.FixtureRequest, tmp_path: Path, name: str, tarpit: int
) -> None:
    cfg = keystore_config(name, request, timeout_seconds=1)
    if name == "kmip":
        cfg["port"] = tarpit
    else:
        cfg["address"] = f"http://127.0.0.1:{tarpit}"
    b: Broker = make_broker(name, tmp_path / "data", cfg)
    t0 = time.monotonic()
    r = b.create({"algorithm": "AES", "key_length": 256})
    elapsed = time.monotonic() - t0
    assert r.status_code == 503, r.text
    assert r.json()["backend"] in ("vault", "kmip") and "timeout 1s" in r.json()["detail"]
    assert elapsed < 4, f"took {elapsed:.1f}s"
    assert b.listed() == set()
    b.services.db.dispose()
