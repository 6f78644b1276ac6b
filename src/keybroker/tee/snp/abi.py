"""AMD SEV-SNP ATTESTATION_REPORT layout: raw bytes to a frozen, typed structure. No crypto, no policy.

Sources (all little-endian, packed):

* [ABI] AMD "SEV Secure Nested Paging Firmware ABI Specification" (56860), section "Attestation",
  Table "ATTESTATION_REPORT Structure" (Table 22 in revision 1.55; report version 2), with the
  additions of later revisions: version 3 (CPUID_FAM_ID, CPUID_MOD_ID, CPUID_STEP at 0x188; the
  ALIAS_CHECK_COMPLETE platform bit), version 5 (revision 1.58: LAUNCH_MIT_VECTOR and
  CURRENT_MIT_VECTOR at 0x1F8; POLICY bit 25 PAGE_SWAP_DISABLE; the SEV-TIO platform bit); Table
  "TCB_VERSION Structure" (the Milan/Genoa and the Turin layouts); Chapter "Signature Formats",
  Table "ECDSA P-384 with SHA-384 Signature" (R and S as 72-byte little-endian integers).
* Cross-checked with google/go-sev-guest ``abi/abi.go`` and virtee/sev
  ``src/firmware/guest/types/snp.rs`` (``/work/shared/docs/tee-facts.md`` §1).

Version 4 is a report version AMD keeps under embargo; it has been seen on Milan hosts with
firmware 1.55.31 and go-sev-guest and virtee/sev both parse it with the version 3 layout. So do
we, and because every range that version 3 reserves must still be zero, a version 4 report that
used any of them for a new field is rejected rather than misread. Versions below 2 and above 5 are
rejected.

The parse checks the exact length, every must-be-zero range and bit, and the reserved values of
enumerations, and an error names the field and its offset. It says nothing about authenticity:
callers hold the result as ``unverified_report`` until ``verify.verify_report`` has checked it.
TCB_VERSION fields are kept raw here because their layout depends on the product, which a
version 2 report only reveals through its VCEK; :func:`decode_tcb` reads them once the product
is known.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any, Final, Literal

from keybroker.errors import EvidenceParseError

__all__ = [
    "PRODUCTS",
    "REPORT_SIZE",
    "SIGNATURE_ALGO_ECDSA_P384_SHA384",
    "SIGNED_SIZE",
    "SIGNING_KEY_NONE",
    "SIGNING_KEY_VCEK",
    "SIGNING_KEY_VLEK",
    "SUPPORTED_VERSIONS",
    "AttestationReport",
    "Cpuid",
    "FirmwareVersion",
    "GuestPolicy",
    "KeyInfo",
    "PlatformInfo",
    "Product",
    "ReportTcbs",
    "SigningKey",
    "Tcb",
    "decode_tcb",
    "parse_report",
    "product_from_cpuid",
]

Product = Literal["Milan", "Genoa", "Turin"]
PRODUCTS: Final[tuple[Product, ...]] = ("Milan", "Genoa", "Turin")
SigningKey = Literal["vcek", "vlek"]

SUPPORTED_VERSIONS: Final = (2, 3, 4, 5)
SIGNATURE_ALGO_ECDSA_P384_SHA384: Final = 1
SIGNING_KEY_VCEK: Final = 0
SIGNING_KEY_VLEK: Final = 1
SIGNING_KEY_NONE: Final = 7

# --- [ABI] Table "ATTESTATION_REPORT Structure" (0x4A0 bytes) --------------------------------------
VERSION_START: Final = 0x000
VERSION_END: Final = VERSION_START + 4
GUEST_SVN_END: Final = VERSION_END + 4
POLICY_END: Final = GUEST_SVN_END + 8
FAMILY_ID_END: Final = POLICY_END + 16
IMAGE_ID_END: Final = FAMILY_ID_END + 16
VMPL_END: Final = IMAGE_ID_END + 4
SIGNATURE_ALGO_END: Final = VMPL_END + 4
CURRENT_TCB_END: Final = SIGNATURE_ALGO_END + 8  # 0x040
PLATFORM_INFO_END: Final = CURRENT_TCB_END + 8
KEY_INFO_END: Final = PLATFORM_INFO_END + 4  # 0x04C
RESERVED_04C_END: Final = KEY_INFO_END + 4  # MBZ
REPORT_DATA_END: Final = RESERVED_04C_END + 64  # 0x090
MEASUREMENT_END: Final = REPORT_DATA_END + 48  # 0x0C0
HOST_DATA_END: Final = MEASUREMENT_END + 32
ID_KEY_DIGEST_END: Final = HOST_DATA_END + 48  # 0x110
AUTHOR_KEY_DIGEST_END: Final = ID_KEY_DIGEST_END + 48  # 0x140
REPORT_ID_END: Final = AUTHOR_KEY_DIGEST_END + 32
REPORT_ID_MA_END: Final = REPORT_ID_END + 32  # 0x180
REPORTED_TCB_END: Final = REPORT_ID_MA_END + 8  # 0x188
# Single-byte fields are named by their offset.
CPUID_FAM_ID: Final = REPORTED_TCB_END  # v3+; MBZ in v2
CPUID_MOD_ID: Final = CPUID_FAM_ID + 1
CPUID_STEP: Final = CPUID_MOD_ID + 1
RESERVED_18B_START: Final = CPUID_STEP + 1  # MBZ
RESERVED_18B_END: Final = RESERVED_18B_START + 21  # 0x1A0
CHIP_ID_END: Final = RESERVED_18B_END + 64  # 0x1E0
COMMITTED_TCB_END: Final = CHIP_ID_END + 8  # 0x1E8
CURRENT_BUILD: Final = COMMITTED_TCB_END
CURRENT_MINOR: Final = CURRENT_BUILD + 1
CURRENT_MAJOR: Final = CURRENT_MINOR + 1
RESERVED_1EB: Final = CURRENT_MAJOR + 1  # MBZ
COMMITTED_BUILD: Final = RESERVED_1EB + 1
COMMITTED_MINOR: Final = COMMITTED_BUILD + 1
COMMITTED_MAJOR: Final = COMMITTED_MINOR + 1
RESERVED_1EF: Final = COMMITTED_MAJOR + 1  # MBZ
LAUNCH_TCB_START: Final = RESERVED_1EF + 1  # 0x1F0
LAUNCH_TCB_END: Final = LAUNCH_TCB_START + 8  # 0x1F8
LAUNCH_MIT_VECTOR_END: Final = LAUNCH_TCB_END + 8  # v5; MBZ before
CURRENT_MIT_VECTOR_END: Final = LAUNCH_MIT_VECTOR_END + 8  # 0x208; v5; MBZ before
RESERVED_208_END: Final = 0x2A0  # MBZ
#: The signature covers bytes [0, SIGNED_SIZE).
SIGNED_SIZE: Final = RESERVED_208_END
# [ABI] Table "ECDSA P-384 with SHA-384 Signature": R and S zero-extended to 72 bytes, then reserved.
SIG_R_END: Final = SIGNED_SIZE + 72  # 0x2E8
SIG_S_END: Final = SIG_R_END + 72  # 0x330
SIG_COMPONENT_SIZE: Final = 48  # P-384: bytes 48..71 of R and S are zero
REPORT_SIZE: Final = SIG_S_END + 0x170  # 0x4A0; 0x330..0x49F MBZ (unsigned!)

assert CURRENT_TCB_END == 0x040 and REPORT_DATA_END == 0x090 and REPORT_ID_MA_END == 0x180
assert (
    CHIP_ID_END == 0x1E0
    and LAUNCH_TCB_START == 0x1F0
    and LAUNCH_TCB_END == 0x1F8
    and CURRENT_MIT_VECTOR_END == 0x208
)
assert REPORT_SIZE == 0x4A0 == 1184

# [ABI] Table "GUEST_POLICY Structure".
_POLICY_SMT: Final = 1 << 16
_POLICY_RESERVED_ONE: Final = 1 << 17  # "Reserved. Must be one."
_POLICY_MIGRATE_MA: Final = 1 << 18
_POLICY_DEBUG: Final = 1 << 19
_POLICY_SINGLE_SOCKET: Final = 1 << 20
_POLICY_CXL_ALLOW: Final = 1 << 21
_POLICY_MEM_AES_256_XTS: Final = 1 << 22
_POLICY_RAPL_DIS: Final = 1 << 23
_POLICY_CIPHERTEXT_HIDING: Final = 1 << 24
_POLICY_PAGE_SWAP_DISABLE: Final = 1 << 25
#: Bits 63:26 of POLICY must be zero.
POLICY_MBZ: Final = ~((1 << 26) - 1) & 0xFFFF_FFFF_FFFF_FFFF

# [ABI] Table "PLATFORM_INFO Field". Bit 6 and bits 63:8 are not defined by the revisions this
# code follows; a set one is exposed as ``reserved`` (it describes the host, not the guest).
_PLAT_SMT_EN: Final = 1 << 0
_PLAT_TSME_EN: Final = 1 << 1
_PLAT_ECC_EN: Final = 1 << 2
_PLAT_RAPL_DIS: Final = 1 << 3
_PLAT_CIPHERTEXT_HIDING_DRAM_EN: Final = 1 << 4
_PLAT_ALIAS_CHECK_COMPLETE: Final = 1 << 5
_PLAT_SEV_TIO_EN: Final = 1 << 7
_PLAT_DEFINED: Final = (
    _PLAT_SMT_EN
    | _PLAT_TSME_EN
    | _PLAT_ECC_EN
    | _PLAT_RAPL_DIS
    | _PLAT_CIPHERTEXT_HIDING_DRAM_EN
    | _PLAT_ALIAS_CHECK_COMPLETE
    | _PLAT_SEV_TIO_EN
)

# [ABI] KEY_INFO (0x48): bit 0 AUTHOR_KEY_EN, bit 1 MASK_CHIP_KEY, bits 4:2 SIGNING_KEY, 31:5 MBZ.
_KEY_INFO_AUTHOR_KEY_EN: Final = 1 << 0
_KEY_INFO_MASK_CHIP_KEY: Final = 1 << 1
_KEY_INFO_SIGNING_KEY_SHIFT: Final = 2
_KEY_INFO_MBZ: Final = ~((1 << 5) - 1) & 0xFFFF_FFFF


@dataclass(frozen=True, slots=True)
class GuestPolicy:
    """POLICY: what the guest owner allowed at launch (bits 63:26 are zero: checked by the parse)."""

    value: int

    @property
    def abi_minor(self) -> int:
        return self.value & 0xFF

    @property
    def abi_major(self) -> int:
        return (self.value >> 8) & 0xFF

    @property
    def smt(self) -> bool:
        return bool(self.value & _POLICY_SMT)

    @property
    def migrate_ma(self) -> bool:
        return bool(self.value & _POLICY_MIGRATE_MA)

    @property
    def debug(self) -> bool:
        return bool(self.value & _POLICY_DEBUG)

    @property
    def single_socket(self) -> bool:
        return bool(self.value & _POLICY_SINGLE_SOCKET)

    def to_dict(self) -> dict[str, Any]:
        v = self.value
        return {
            "value": f"{v:016x}",
            "abi_major": self.abi_major,
            "abi_minor": self.abi_minor,
            "smt": self.smt,
            "migrate_ma": self.migrate_ma,
            "debug": self.debug,
            "single_socket": self.single_socket,
            "cxl_allow": bool(v & _POLICY_CXL_ALLOW),
            "mem_aes_256_xts": bool(v & _POLICY_MEM_AES_256_XTS),
            "rapl_dis": bool(v & _POLICY_RAPL_DIS),
            "ciphertext_hiding": bool(v & _POLICY_CIPHERTEXT_HIDING),
            "page_swap_disable": bool(v & _POLICY_PAGE_SWAP_DISABLE),
        }


@dataclass(frozen=True, slots=True)
class PlatformInfo:
    """PLATFORM_INFO: the host's configuration when the report was made."""

    value: int

    @property
    def reserved(self) -> int:
        """The set bits that no revision this code follows defines."""
        return self.value & ~_PLAT_DEFINED

    def to_dict(self) -> dict[str, Any]:
        v = self.value
        return {
            "value": f"{v:016x}",
            "smt_enabled": bool(v & _PLAT_SMT_EN),
            "tsme_enabled": bool(v & _PLAT_TSME_EN),
            "ecc_enabled": bool(v & _PLAT_ECC_EN),
            "rapl_disabled": bool(v & _PLAT_RAPL_DIS),
            "ciphertext_hiding_dram_enabled": bool(v & _PLAT_CIPHERTEXT_HIDING_DRAM_EN),
            "alias_check_complete": bool(v & _PLAT_ALIAS_CHECK_COMPLETE),
            "sev_tio_enabled": bool(v & _PLAT_SEV_TIO_EN),
            "reserved": f"{self.reserved:016x}",
        }


@dataclass(frozen=True, slots=True)
class KeyInfo:
    """KEY_INFO (0x48). ``signing_key_code`` is 0 (VCEK), 1 (VLEK) or 7 (none: unsigned)."""

    value: int

    @property
    def author_key_en(self) -> bool:
        return bool(self.value & _KEY_INFO_AUTHOR_KEY_EN)

    @property
    def mask_chip_key(self) -> bool:
        """Set: the firmware did not sign the report (SIGNATURE is zero)."""
        return bool(self.value & _KEY_INFO_MASK_CHIP_KEY)

    @property
    def signing_key_code(self) -> int:
        return (self.value >> _KEY_INFO_SIGNING_KEY_SHIFT) & 0x7

    @property
    def signing_key(self) -> SigningKey | None:
        """``vcek``, ``vlek``, or None when the report names no signing key (code 7)."""
        code = self.signing_key_code
        if code == SIGNING_KEY_VCEK:
            return "vcek"
        if code == SIGNING_KEY_VLEK:
            return "vlek"
        return None


@dataclass(frozen=True, slots=True, order=True)
class FirmwareVersion:
    """A firmware version (major.minor, build); ordered by (major, minor, build)."""

    major: int
    minor: int
    build: int

    def __str__(self) -> str:
        return f"{self.major}.{self.minor}.{self.build}"

    def to_dict(self) -> dict[str, int]:
        return {"major": self.major, "minor": self.minor, "build": self.build}


@dataclass(frozen=True, slots=True)
class Cpuid:
    """CPUID_FAM_ID (extended + base family), CPUID_MOD_ID (extended model << 4 | model), CPUID_STEP."""

    family: int
    model: int
    stepping: int

    @property
    def product(self) -> Product | None:
        return product_from_cpuid(self.family, self.model)

    def to_dict(self) -> dict[str, str]:
        return {
            "family": f"{self.family:02x}",
            "model": f"{self.model:02x}",
            "stepping": f"{self.stepping:02x}",
        }


def product_from_cpuid(family: int, model: int) -> Product | None:
    """The SEV-SNP product of a CPU family/model (virtee/sev ``Generation::identify_cpu``), or None.

    Family 19h: models 00h-0Fh Milan, 10h-1Fh and A0h-AFh Genoa (incl. Bergamo/Siena); family 1Ah:
    models 00h-11h Turin. Anything else (Venice, unknown parts) is not a product this code knows.
    """
    if family == 0x19:
        if model <= 0x0F:
            return "Milan"
        if 0x10 <= model <= 0x1F or 0xA0 <= model <= 0xAF:
            return "Genoa"
    elif family == 0x1A and model <= 0x11:
        return "Turin"
    return None


@dataclass(frozen=True, slots=True)
class Tcb:
    """A TCB_VERSION decoded: security patch levels. ``fmc`` exists on Turin only (else None)."""

    bootloader: int
    tee: int
    snp: int
    microcode: int
    fmc: int | None = None

    def components(self) -> dict[str, int]:
        out = {"bootloader": self.bootloader, "tee": self.tee, "snp": self.snp, "microcode": self.microcode}
        if self.fmc is not None:
            out["fmc"] = self.fmc
        return out

    def le(self, other: Tcb) -> bool:
        """Component-wise ``self <= other`` (both of one product)."""
        mine, theirs = self.components(), other.components()
        return mine.keys() == theirs.keys() and all(mine[k] <= theirs[k] for k in mine)

    def encode(self, product: Product) -> bytes:
        """The 8-byte TCB_VERSION of ``product`` (reserved bytes zero)."""
        for name, value in self.components().items():
            if not 0 <= value <= 0xFF:
                raise ValueError(f"TCB {name} {value} is not a byte")
        if product == "Turin":
            if self.fmc is None:
                raise ValueError("a Turin TCB has an FMC SPL")
            return bytes([self.fmc, self.bootloader, self.tee, self.snp, 0, 0, 0, self.microcode])
        if self.fmc is not None:
            raise ValueError(f"a {product} TCB has no FMC SPL")
        return bytes([self.bootloader, self.tee, 0, 0, 0, 0, self.snp, self.microcode])

    def to_dict(self, raw: bytes | None = None) -> dict[str, Any]:
        out: dict[str, Any] = {
            "bootloader": self.bootloader,
            "tee": self.tee,
            "snp": self.snp,
            "microcode": self.microcode,
            "fmc": self.fmc,
        }
        if raw is not None:
            out["raw"] = raw.hex()
        return out


# [ABI] Table "TCB_VERSION Structure": byte positions of the components and the reserved bytes.
_TCB_LAYOUT: Final[dict[str, tuple[dict[str, int], tuple[int, ...]]]] = {
    # Milan, Genoa: BOOT_LOADER, TEE, 4 reserved, SNP, MICROCODE.
    "legacy": ({"bootloader": 0, "tee": 1, "snp": 6, "microcode": 7}, (2, 3, 4, 5)),
    # Turin: FMC, BOOT_LOADER, TEE, SNP, 3 reserved, MICROCODE.
    "Turin": ({"fmc": 0, "bootloader": 1, "tee": 2, "snp": 3, "microcode": 7}, (4, 5, 6)),
}


def decode_tcb(raw: bytes, product: Product, *, field: str = "tcb", offset: int | None = None) -> Tcb:
    """Decode an 8-byte TCB_VERSION in ``product``'s layout; its reserved bytes must be zero.

    Reading a Milan TCB as Turin shows the microcode SPL as FMC (virtee/snphost#125): the layout
    must come from the product, never be guessed.
    """
    if len(raw) != 8:
        raise EvidenceParseError(f"{field}: expected 8 bytes, got {len(raw)}", field=field, offset=offset)
    positions, reserved = _TCB_LAYOUT["Turin" if product == "Turin" else "legacy"]
    for i in reserved:
        if raw[i]:
            raise EvidenceParseError(
                f"{field} {raw.hex()}: byte {i} is reserved in the {product} TCB_VERSION layout and must be "
                f"zero, found 0x{raw[i]:02x}",
                field=field,
                offset=None if offset is None else offset + i,
            )
    return Tcb(
        bootloader=raw[positions["bootloader"]],
        tee=raw[positions["tee"]],
        snp=raw[positions["snp"]],
        microcode=raw[positions["microcode"]],
        fmc=raw[positions["fmc"]] if "fmc" in positions else None,
    )


@dataclass(frozen=True, slots=True)
class ReportTcbs:
    """The four TCB_VERSION fields of a report, decoded for one product."""

    current: Tcb
    reported: Tcb
    committed: Tcb
    launch: Tcb


@dataclass(frozen=True, slots=True)
class AttestationReport:
    """A parsed, **unverified** ATTESTATION_REPORT. ``raw`` is the 1184 bytes as received.

    ``cpuid`` is None for version 2; the mitigation vectors are None before version 5.
    TCB fields are the raw 8 bytes: decode them with :meth:`tcbs` once the product is known.
    """

    raw: bytes
    version: int
    guest_svn: int
    policy: GuestPolicy
    family_id: bytes
    image_id: bytes
    vmpl: int
    signature_algo: int
    current_tcb: bytes
    platform_info: PlatformInfo
    key_info: KeyInfo
    report_data: bytes
    measurement: bytes
    host_data: bytes
    id_key_digest: bytes
    author_key_digest: bytes
    report_id: bytes
    report_id_ma: bytes
    reported_tcb: bytes
    cpuid: Cpuid | None
    chip_id: bytes
    committed_tcb: bytes
    current_version: FirmwareVersion
    committed_version: FirmwareVersion
    launch_tcb: bytes
    launch_mit_vector: int | None
    current_mit_vector: int | None
    #: ECDSA signature (r, s) as integers (the report stores them little-endian).
    signature_r: int
    signature_s: int

    @property
    def signed_data(self) -> bytes:
        """Bytes 0x000-0x29F: what the VCEK/VLEK signs (SHA-384, ECDSA P-384)."""
        return self.raw[:SIGNED_SIZE]

    @property
    def signing_key(self) -> SigningKey | None:
        return self.key_info.signing_key

    @property
    def cpuid_product(self) -> Product | None:
        """The product the CPUID fields name (None for version 2 or an unknown CPU)."""
        return None if self.cpuid is None else self.cpuid.product

    def tcbs(self, product: Product) -> ReportTcbs:
        """The four TCB fields in ``product``'s layout (``EvidenceParseError`` on a reserved byte)."""
        return ReportTcbs(
            current=decode_tcb(self.current_tcb, product, field="current_tcb", offset=SIGNATURE_ALGO_END),
            reported=decode_tcb(self.reported_tcb, product, field="reported_tcb", offset=REPORT_ID_MA_END),
            committed=decode_tcb(self.committed_tcb, product, field="committed_tcb", offset=CHIP_ID_END),
            launch=decode_tcb(self.launch_tcb, product, field="launch_tcb", offset=LAUNCH_TCB_START),
        )


def _u32(raw: bytes, offset: int) -> int:
    value: int = struct.unpack_from("<I", raw, offset)[0]
    return value


def _u64(raw: bytes, offset: int) -> int:
    value: int = struct.unpack_from("<Q", raw, offset)[0]
    return value


def _zero(raw: bytes, start: int, end: int, field: str) -> None:
    chunk = raw[start:end]
    if chunk.count(0) != len(chunk):
        first = next(i for i, b in enumerate(chunk) if b)
        raise EvidenceParseError(
            f"{field} (0x{start:03X}-0x{end - 1:03X}) must be zero, byte 0x{start + first:03X} is "
            f"0x{chunk[first]:02x}",
            field=field,
            offset=start + first,
        )


def parse_report(raw: bytes) -> AttestationReport:
    """Parse an SEV-SNP ATTESTATION_REPORT (exactly 0x4A0 bytes; versions 2, 3, 4 and 5).

    Raises ``EvidenceParseError`` naming the field and offset on any structural problem: wrong
    length, unsupported version, a must-be-zero range or bit that is not, POLICY bit 17 clear, a
    reserved SIGNING_KEY or SIGNATURE_ALGO value, a VMPL above 3.
    """
    if not isinstance(raw, bytes | bytearray | memoryview):
        raise EvidenceParseError("report must be bytes", field="report", offset=0)
    raw = bytes(raw)
    if len(raw) != REPORT_SIZE:
        raise EvidenceParseError(
            f"report is {len(raw)} bytes, an ATTESTATION_REPORT is exactly {REPORT_SIZE} (0x{REPORT_SIZE:X})",
            field="report",
            offset=0,
        )
    version = _u32(raw, VERSION_START)
    if version not in SUPPORTED_VERSIONS:
        raise EvidenceParseError(
            f"report version {version} is not supported (2, 3, 4, 5)", field="version", offset=VERSION_START
        )

    policy = _u64(raw, GUEST_SVN_END)
    if not policy & _POLICY_RESERVED_ONE:
        raise EvidenceParseError(
            f"policy 0x{policy:016x}: bit 17 is reserved and must be one",
            field="policy",
            offset=GUEST_SVN_END,
        )
    if policy & POLICY_MBZ:
        raise EvidenceParseError(
            f"policy 0x{policy:016x}: bits 63:26 must be zero, found 0x{policy & POLICY_MBZ:016x}",
            field="policy",
            offset=GUEST_SVN_END,
        )
    vmpl = _u32(raw, IMAGE_ID_END)
    if vmpl > 3:
        raise EvidenceParseError(f"vmpl {vmpl} is not 0-3", field="vmpl", offset=IMAGE_ID_END)
    signature_algo = _u32(raw, VMPL_END)
    if signature_algo != SIGNATURE_ALGO_ECDSA_P384_SHA384:
        raise EvidenceParseError(
            f"signature_algo {signature_algo} is not supported (1: ECDSA P-384 with SHA-384)",
            field="signature_algo",
            offset=VMPL_END,
        )
    key_info = _u32(raw, PLATFORM_INFO_END)
    if key_info & _KEY_INFO_MBZ:
        raise EvidenceParseError(
            f"key_info 0x{key_info:08x}: bits 31:5 must be zero", field="key_info", offset=PLATFORM_INFO_END
        )
    signing_code = (key_info >> _KEY_INFO_SIGNING_KEY_SHIFT) & 0x7
    if signing_code not in (SIGNING_KEY_VCEK, SIGNING_KEY_VLEK, SIGNING_KEY_NONE):
        raise EvidenceParseError(
            f"key_info.signing_key {signing_code} is reserved (0 VCEK, 1 VLEK, 7 none)",
            field="key_info.signing_key",
            offset=PLATFORM_INFO_END,
        )
    _zero(raw, KEY_INFO_END, RESERVED_04C_END, "reserved_04c")

    cpuid: Cpuid | None = None
    if version == 2:
        _zero(raw, CPUID_FAM_ID, RESERVED_18B_END, "reserved_188")
    else:
        cpuid = Cpuid(family=raw[CPUID_FAM_ID], model=raw[CPUID_MOD_ID], stepping=raw[CPUID_STEP])
        _zero(raw, RESERVED_18B_START, RESERVED_18B_END, "reserved_18b")
    _zero(raw, RESERVED_1EB, RESERVED_1EB + 1, "reserved_1eb")
    _zero(raw, RESERVED_1EF, RESERVED_1EF + 1, "reserved_1ef")
    launch_mit: int | None = None
    current_mit: int | None = None
    if version >= 5:
        launch_mit = _u64(raw, LAUNCH_TCB_END)
        current_mit = _u64(raw, LAUNCH_MIT_VECTOR_END)
        _zero(raw, CURRENT_MIT_VECTOR_END, RESERVED_208_END, "reserved_208")
    else:
        _zero(raw, LAUNCH_TCB_END, RESERVED_208_END, "reserved_1f8")

    # The signature area is not signed: only R and S in their 48 significant bytes may be non-zero.
    _zero(raw, SIGNED_SIZE + SIG_COMPONENT_SIZE, SIG_R_END, "signature.r")
    _zero(raw, SIG_R_END + SIG_COMPONENT_SIZE, SIG_S_END, "signature.s")
    _zero(raw, SIG_S_END, REPORT_SIZE, "signature.reserved")

    return AttestationReport(
        raw=raw,
        version=version,
        guest_svn=_u32(raw, VERSION_END),
        policy=GuestPolicy(policy),
        family_id=raw[POLICY_END:FAMILY_ID_END],
        image_id=raw[FAMILY_ID_END:IMAGE_ID_END],
        vmpl=vmpl,
        signature_algo=signature_algo,
        current_tcb=raw[SIGNATURE_ALGO_END:CURRENT_TCB_END],
        platform_info=PlatformInfo(_u64(raw, CURRENT_TCB_END)),
        key_info=KeyInfo(key_info),
        report_data=raw[RESERVED_04C_END:REPORT_DATA_END],
        measurement=raw[REPORT_DATA_END:MEASUREMENT_END],
        host_data=raw[MEASUREMENT_END:HOST_DATA_END],
        id_key_digest=raw[HOST_DATA_END:ID_KEY_DIGEST_END],
        author_key_digest=raw[ID_KEY_DIGEST_END:AUTHOR_KEY_DIGEST_END],
        report_id=raw[AUTHOR_KEY_DIGEST_END:REPORT_ID_END],
        report_id_ma=raw[REPORT_ID_END:REPORT_ID_MA_END],
        reported_tcb=raw[REPORT_ID_MA_END:REPORTED_TCB_END],
        cpuid=cpuid,
        chip_id=raw[RESERVED_18B_END:CHIP_ID_END],
        committed_tcb=raw[CHIP_ID_END:COMMITTED_TCB_END],
        current_version=FirmwareVersion(
            major=raw[CURRENT_MAJOR], minor=raw[CURRENT_MINOR], build=raw[CURRENT_BUILD]
        ),
        committed_version=FirmwareVersion(
            major=raw[COMMITTED_MAJOR], minor=raw[COMMITTED_MINOR], build=raw[COMMITTED_BUILD]
        ),
        launch_tcb=raw[LAUNCH_TCB_START:LAUNCH_TCB_END],
        launch_mit_vector=launch_mit,
        current_mit_vector=current_mit,
        signature_r=int.from_bytes(raw[SIGNED_SIZE:SIG_R_END], "little"),
        signature_s=int.from_bytes(raw[SIG_R_END:SIG_S_END], "little"),
    )
