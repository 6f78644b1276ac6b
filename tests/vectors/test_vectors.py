"""The vendored vectors are the files their provenance names, byte for byte, and nothing else."""

from __future__ import annotations

import hashlib
import json
import re

from tests.vectors.corpus import CORPUS, load_cases

_COMMIT = re.compile(r"\b[0-9a-f]{40}\b")
_FILE_FIELDS = (
    "quote",
    "collateral",
    "report",
    "vcek",
    "ca_chain",
    "message",
    "signature",
    "ak_pub",
    "evidence",
    "ak_cert",
    "ak_ca",
)
_INDEX_FILES = {"MANIFEST.md", "cases.json", "provenance.json"}


def _provenance() -> dict[str, dict[str, str]]:
    doc = json.loads((CORPUS / "provenance.json").read_text())
    return {f["file"]: f for f in doc["files"]}


def test_every_file_matches_its_recorded_sha256() -> None:
    mismatched = [
        name
        for name, entry in _provenance().items()
        if hashlib.sha256((CORPUS / name).read_bytes()).hexdigest() != entry["sha256"]
    ]
    assert mismatched == []


def test_every_file_has_a_provenance_entry_with_an_origin() -> None:
    on_disk = {str(p.relative_to(CORPUS)) for p in CORPUS.rglob("*") if p.is_file()} - _INDEX_FILES
    prov = _provenance()
    assert on_disk == set(prov)
    for name, entry in prov.items():
        assert entry["origin"].split(":")[0] in {"github", "pypi", "derived"}, name
        if entry["origin"].startswith("github:"):
            # the commit is its own field, or pinned in the origin as repo@commit
            assert _COMMIT.search(entry["commit"] + " " + entry["origin"]), name


def test_every_case_names_vendored_files() -> None:
    prov = _provenance()
    for case in load_cases(None):
        for field in _FILE_FIELDS:
            value = case.get(field)
            for name in value if isinstance(value, list) else [value]:
                if name is not None:
                    assert name in prov, (case["id"], field, name)
