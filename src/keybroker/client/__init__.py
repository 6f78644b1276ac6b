"""The workload side of keybroker, importable without the server's dependencies.

Inside a TEE, :mod:`keybroker.client` obtains evidence (:mod:`~keybroker.client.evidence`), runs a
release protocol against the broker (``/kbs/v1``: :mod:`~keybroker.client.protocol_v1`, ``/kbs/v0``:
:mod:`~keybroker.client.protocol_v0`) over verified TLS (:mod:`~keybroker.client.http`), opens the
wrapped key with an ephemeral key pair that never leaves memory (:mod:`~keybroker.client.unwrap`),
and can place it in a PKCS#11 token as a non-extractable object
(:mod:`~keybroker.client.pkcs11_import`). The ``keybroker-client`` CLI is a thin layer over these.
"""

from __future__ import annotations
