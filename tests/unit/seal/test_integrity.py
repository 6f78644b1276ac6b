"""Integrity tags (``keybroker.seal.integrity``): what each covers, and that a tag moved to another
row, another table or another key store does not verify."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from keybroker.errors import Sealed
from keybroker.seal import integrity
from keybroker.seal.barrier import Barrier
from keybroker.seal.integrity import IntegrityFailure, RowIntegrity
from keybroker.store.db import Database


def _unsealed(tmp_path: Path, name: str) -> Barrier:
    db = Database(f"sqlite:///{tmp_path / name}.db")
    db.migrate()
    barrier = Barrier(db)
    barrier.init_devfile(tmp_path / f"{name}.key")
    barrier.unseal_devfile(tmp_path / f"{name}.key")
    return barrier


@pytest.fixture
def tags(tmp_path: Path) -> RowIntegrity:
    return RowIntegrity(_unsealed(tmp_path, "a"))


KEY: dict[str, Any] = {
    "key_id": "6b1c9a52-6f0e-4f7e-9d3c-2f4b8f1f0a11",
    "algorithm": "AES",
    "key_length": 256,
    "curve_type": None,
    "keystore": "vault",
    "backend_ref": "transit/keys/a",
    "public_key_pem": None,
    "transfer_policy_id": "0d4c0f0e-9a9b-4c55-8d1c-7f2f3a1e2b3c",
}


@pytest.mark.parametrize(
    "field, value",
    [
        ("key_id", "6b1c9a52-6f0e-4f7e-9d3c-2f4b8f1f0a12"),
        ("algorithm", "RSA"),
        ("key_length", 128),
        ("curve_type", "P-256"),
        ("keystore", "kmip"),
        ("backend_ref", "transit/keys/b"),
        ("public_key_pem", "-----BEGIN PUBLIC KEY-----"),
        ("transfer_policy_id", None),
    ],
)
def test_a_key_tag_covers_every_field_that_decides_a_release(
    tags: RowIntegrity, field: str, value: Any
) -> None:
    tag = tags.tag(integrity.key_content(**KEY))
    tags.check(integrity.key_content(**KEY), tag)
    with pytest.raises(IntegrityFailure, match="was changed outside keybroker"):
        tags.check(integrity.key_content(**(KEY | {field: value})), tag)


def test_a_tag_does_not_move_to_another_row_or_table(tags: RowIntegrity) -> None:
    body = {"attestation_type": ["SGX"], "sgx": {"attributes": {"isvprodid": [7]}}}
    tag = tags.tag(integrity.policy_content("p1", body))
    assert tags.verifies(integrity.policy_content("p1", body), tag)
    assert not tags.verifies(integrity.policy_content("p2", body), tag)
    assert not tags.verifies(
        integrity.resource_content(path="p1", kind="secret", key_id=None, policy=body), tag
    )
    loose = {"attestation_type": ["SGX"], "sgx": {"attributes": {"isvprodid": [7, 9]}}}
    assert not tags.verifies(integrity.policy_content("p1", loose), tag)


def test_a_missing_tag_is_refused_naming_the_adoption(tags: RowIntegrity) -> None:
    content = integrity.resource_content(path="repo/secret/db", kind="secret", key_id=None, policy=None)
    with pytest.raises(IntegrityFailure, match="resource repo/secret/db has no integrity tag") as e:
        tags.check(content, None)
    assert e.value.status == 403 and "keybroker operator integrity --adopt" in e.value.detail


def test_another_key_stores_tag_does_not_verify_and_nothing_is_tagged_while_sealed(
    tags: RowIntegrity, tmp_path: Path
) -> None:
    content = integrity.policy_content("p1", {"attestation_type": ["SGX"]})
    other = _unsealed(tmp_path, "b")
    assert not tags.verifies(content, RowIntegrity(other).tag(content))
    other.seal()
    with pytest.raises(Sealed):
        RowIntegrity(other).tag(content)
