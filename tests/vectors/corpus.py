"""The attestation evidence corpus vendored in ``tests/vectors/attestation/``.

Real SGX/TDX quotes with Intel collateral, SEV-SNP reports with AMD chains, Azure vTPM evidence and
TPM quotes, with ``cases.json`` (evidence, collateral, verification time, expected verdict) and
``provenance.json`` (each file's upstream repository, commit, path and sha256; checked by
``tests/vectors/test_vectors.py``). Tests reference files by case id or path relative to that folder.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from typing import Any

CORPUS = Path(__file__).resolve().parent / "attestation"


@cache
def _cases() -> tuple[dict[str, Any], ...]:
    doc = json.loads((CORPUS / "cases.json").read_text())
    return tuple(doc["cases"])


def load_cases(type: str | None = "dcap") -> list[dict[str, Any]]:  # noqa: A002 - matches cases.json
    """Cases from ``cases.json`` of one ``type`` (``dcap``, ``snp``, ``az-vtpm``, ``tpm2-quote``; None: all)."""
    return [dict(c) for c in _cases() if type is None or c["type"] == type]


def case(case_id: str) -> dict[str, Any]:
    for c in _cases():
        if c["id"] == case_id:
            return dict(c)
    raise KeyError(case_id)


def path(rel: str) -> Path:
    """Absolute path of a corpus file given relative to the corpus root."""
    return CORPUS / rel


def read_bytes(rel: str) -> bytes:
    return path(rel).read_bytes()


def read_text(rel: str) -> str:
    return path(rel).read_text()


def verify_at(c: dict[str, Any]) -> datetime:
    """A case's ``verify_at`` (unix seconds) as an aware UTC datetime."""
    return datetime.fromtimestamp(c["verify_at"], UTC)
