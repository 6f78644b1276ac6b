"""The SEV-SNP certificate table (extended report / configfs-tsm ``auxblob``): its parser lives in
``keybroker.wire.certtable``, which the workload client shares; re-exported here for the verifier."""

from __future__ import annotations

from keybroker.wire.certtable import (
    ENTRY_SIZE,
    GUID_ARK,
    GUID_ASK,
    GUID_CRL,
    GUID_NAMES,
    GUID_VCEK,
    GUID_VLEK,
    MAX_CERT_TABLE_SIZE,
    CertTable,
    CertTableEntry,
    build_cert_table,
    parse_cert_table,
)

__all__ = [
    "ENTRY_SIZE",
    "GUID_ARK",
    "GUID_ASK",
    "GUID_CRL",
    "GUID_NAMES",
    "GUID_VCEK",
    "GUID_VLEK",
    "MAX_CERT_TABLE_SIZE",
    "CertTable",
    "CertTableEntry",
    "build_cert_table",
    "parse_cert_table",
]
