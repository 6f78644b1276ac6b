"""Integrity tags on the database rows that decide a release: transfer policies, keys, ``/kbs/v0``
resources and approved TPM attestation keys.

These rows are stored in clear (an administrator reads them while the key store is sealed), so
whoever can write the database (its administrator, a stolen credential, a restored backup) could
loosen a key's policy, bind the key to a looser one, point a key at another backend object, drop
a resource's policy, or approve its own software TPM's AK, and a TEE (or none) would then receive the key on terms its owner never set. Each
such row therefore carries a tag: HMAC-SHA256 under a key derived from the root key (HKDF,
:data:`KEY_LABEL`) over the JCS serialization of what the row decides (:func:`policy_content`,
:func:`key_content`, :func:`resource_content`), its table and its primary key included, so that a tag
moved to another row or another table does not verify. The database alone never gives that key.

The services tag a row in the transaction that writes it (the key store is unsealed then, or the
write is refused); the release paths check every row they decide with (:meth:`RowIntegrity.check`)
and deny, with the reason, a row whose tag is missing or does not verify.

What a tag does not stop: a *rollback*, a row put back as it was at an earlier time together with
its tag then (a policy before it was tightened). Nothing in the database can tell that one from the
current row; the audit log records every change the service made, with the content's digest.

Rows written before tags existed carry none: an administrator reviews them and adopts them
(``keybroker operator integrity --adopt``, ``POST /sys/v1/integrity/adopt``); until then they are
never released on. Pending and revoked AKs need no tag: neither is ever trusted.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from typing import Any, Final

from keybroker import jcs
from keybroker.errors import Forbidden
from keybroker.seal.barrier import Barrier
from keybroker.store.models import KbsResource, Key, TpmAk, TransferPolicy

#: HKDF info of the key that tags rows.
KEY_LABEL: Final = b"keybroker/row-integrity/v1"

#: The tables whose rows are tagged, as the tag's content names them.
POLICIES: Final = "transfer_policies"
KEYS: Final = "keys"
RESOURCES: Final = "kbs_resources"
AKS: Final = "tpm_aks"


def policy_content(policy_id: str, body: Mapping[str, Any]) -> dict[str, Any]:
    """What a transfer policy's tag covers: its id and its whole body."""
    return {"table": POLICIES, "id": policy_id, "body": dict(body)}


def key_content(
    *,
    key_id: str,
    algorithm: str,
    key_length: int | None,
    curve_type: str | None,
    keystore: str,
    backend_ref: str | None,
    public_key_pem: str | None,
    transfer_policy_id: str | None,
) -> dict[str, Any]:
    """What a key's tag covers: everything that says which material is released, on which policy.
    Not its label, usage or creation time (descriptions, which decide nothing)."""
    return {
        "table": KEYS,
        "id": key_id,
        "algorithm": algorithm,
        "key_length": key_length,
        "curve_type": curve_type,
        "keystore": keystore,
        "backend_ref": backend_ref,
        "public_key_pem": public_key_pem,
        "transfer_policy_id": transfer_policy_id,
    }


def resource_content(
    *, path: str, kind: str, key_id: str | None, policy: Mapping[str, Any] | None
) -> dict[str, Any]:
    """What a ``/kbs/v0`` resource's tag covers: its path, kind, key and policy (a secret's material
    is sealed and bound to its path already)."""
    return {
        "table": RESOURCES,
        "id": path,
        "kind": kind,
        "key_id": key_id,
        "policy": None if policy is None else dict(policy),
    }


def ak_content_of(row: Any) -> dict[str, Any]:
    """What an enrolled TPM AK's (a ``tpm_aks`` row's) tag covers: its Name and public area, the EK
    it was enrolled through (its quotes' qualifiedSigner is checked against it) and that EK's root,
    and its status (only an approved AK needs a tag that verifies: it is the one trusted)."""
    return {
        "table": AKS,
        "id": row.name,
        "public": row.public.hex(),
        "ek_public": row.ek_public.hex(),
        "ek_root": row.ek_root,
        "ek_root_sha256": row.ek_root_sha256,
        "status": row.status,
    }


def key_content_of(row: Any) -> dict[str, Any]:
    """:func:`key_content` of a ``keys`` row, or of a result row with the same column names."""
    return key_content(
        key_id=row.id,
        algorithm=row.algorithm,
        key_length=row.key_length,
        curve_type=row.curve_type,
        keystore=row.keystore,
        backend_ref=row.backend_ref,
        public_key_pem=row.public_key_pem,
        transfer_policy_id=row.transfer_policy_id,
    )


def resource_content_of(row: Any) -> dict[str, Any]:
    """:func:`resource_content` of a ``kbs_resources`` row, or a result row with its column names."""
    return resource_content(path=row.path, kind=row.kind, key_id=row.key_id, policy=row.policy)


class IntegrityFailure(Forbidden):
    """A row a decision needs has no tag, or a tag that does not verify: never released on."""

    title = "Integrity check failed"


def _what(content: Mapping[str, Any]) -> str:
    table = content["table"]
    noun = {POLICIES: "transfer policy", KEYS: "key", RESOURCES: "resource", AKS: "approved TPM AK"}[table]
    return f"{noun} {content['id']}"


class RowIntegrity:
    """Tags rows and checks them, with the key derived from ``barrier``'s root key (``Sealed``
    while sealed: nothing is tagged or released then)."""

    def __init__(self, barrier: Barrier) -> None:
        self._barrier = barrier

    def tag(self, content: Mapping[str, Any]) -> str:
        key = self._barrier.derive_key(KEY_LABEL)
        return hmac.new(key, jcs.dumps(content), hashlib.sha256).hexdigest()

    def verifies(self, content: Mapping[str, Any], tag: str | None) -> bool:
        return tag is not None and hmac.compare_digest(self.tag(content), tag)

    def tag_policy(self, row: TransferPolicy) -> None:
        """Tag a transfer policy row being written (after its last change in the transaction)."""
        row.integrity_tag = self.tag(policy_content(row.id, row.body))

    def tag_key(self, row: Key) -> None:
        row.integrity_tag = self.tag(key_content_of(row))

    def tag_resource(self, row: KbsResource) -> None:
        row.integrity_tag = self.tag(resource_content_of(row))

    def tag_ak(self, row: TpmAk) -> None:
        row.integrity_tag = self.tag(ak_content_of(row))

    def check(self, content: Mapping[str, Any], tag: str | None) -> None:
        """Refuse (:class:`IntegrityFailure`, 403) unless ``tag`` is ``content``'s."""
        if self.verifies(content, tag):
            return
        what = _what(content)
        if tag is None:
            said = (
                f"the {what} has no integrity tag (written before tags existed, or outside keybroker): "
                "an administrator reviews it and adopts it with 'keybroker operator integrity --adopt'"
            )
        else:
            said = (
                f"the {what} was changed outside keybroker (its integrity tag does not verify): "
                "an administrator reviews it and saves it again"
            )
        raise IntegrityFailure(said, reasons=[said])
