"""TPM 2.0 structures: raw bytes to frozen, typed structures. No signature check, no policy.

Sources (all big-endian, marshalled as the TPM does):

* [P2] TCG TPM 2.0 Library Part 2 "Structures": Table "TPM_ALG_ID", "TPM_ST", "TPM_ECC_CURVE",
  "TPMA_OBJECT", "TPMS_ATTEST", "TPMS_CLOCK_INFO", "TPMS_QUOTE_INFO", "TPML_PCR_SELECTION",
  "TPMS_PCR_SELECTION", "TPMT_SIGNATURE", "TPMT_PUBLIC", "TPMT_SYM_DEF_OBJECT", "TPMT_RSA_SCHEME",
  "TPMT_ECC_SCHEME", "TPMT_KDF_SCHEME", "TPMS_ECC_POINT", "TPM2B_PUBLIC", "TPM2B_NAME".
* [P1] Part 1 "Architecture", 16 "Names" (Name = nameAlg || H_nameAlg(TPMT_PUBLIC)) and the
  Qualified Name (QN = nameAlg || H_nameAlg(QN(parent) || Name)).

Every read is bounds-checked, a TPM2B may not be longer than the TPM's own limit for that type,
and each structure must fill its input exactly: no trailing byte is accepted. An error names the
field and its offset in the input. A parse says nothing about authenticity: hold the result as
``unverified_*`` until ``verify`` has checked the signature.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass
from typing import Final

from cryptography.hazmat.primitives.asymmetric import ec, rsa

from keybroker.errors import EvidenceParseError

__all__ = [
    "ALG_AES",
    "ALG_ECC",
    "ALG_ECDSA",
    "ALG_NULL",
    "ALG_RSA",
    "ALG_RSAPSS",
    "ALG_RSASSA",
    "ALG_SHA1",
    "ALG_SHA256",
    "ALG_SHA384",
    "ALG_SHA512",
    "ATTR_DECRYPT",
    "ATTR_FIXED_PARENT",
    "ATTR_FIXED_TPM",
    "ATTR_RESTRICTED",
    "ATTR_SENSITIVE_DATA_ORIGIN",
    "ATTR_SIGN",
    "ATTR_USER_WITH_AUTH",
    "BANK_NAMES",
    "HASH_ALGS",
    "HASH_SIZES",
    "HIERARCHY_ENDORSEMENT",
    "HIERARCHY_NULL",
    "HIERARCHY_OWNER",
    "TPM_GENERATED_VALUE",
    "TPM_ST_ATTEST_QUOTE",
    "Attest",
    "ClockInfo",
    "PcrSelection",
    "TpmPublic",
    "TpmSignature",
    "hash_alg_by_name",
    "hash_digest",
    "hierarchy_qualified_name",
    "parse_attest",
    "parse_pcr_selection",
    "parse_signature",
    "parse_tpm2b_public",
    "parse_tpmt_public",
    "qualified_name",
]

# --- [P2] Table "TPM_ALG_ID" ------------------------------------------------------------------------
ALG_RSA: Final = 0x0001
ALG_SHA1: Final = 0x0004
ALG_HMAC: Final = 0x0005
ALG_AES: Final = 0x0006
ALG_MGF1: Final = 0x0007
ALG_KEYEDHASH: Final = 0x0008
ALG_XOR: Final = 0x000A
ALG_SHA256: Final = 0x000B
ALG_SHA384: Final = 0x000C
ALG_SHA512: Final = 0x000D
ALG_NULL: Final = 0x0010
ALG_SM3_256: Final = 0x0012
ALG_SM4: Final = 0x0013
ALG_RSASSA: Final = 0x0014
ALG_RSAES: Final = 0x0015
ALG_RSAPSS: Final = 0x0016
ALG_OAEP: Final = 0x0017
ALG_ECDSA: Final = 0x0018
ALG_ECDH: Final = 0x0019
ALG_ECDAA: Final = 0x001A
ALG_SM2: Final = 0x001B
ALG_ECSCHNORR: Final = 0x001C
ALG_KDF1_SP800_56A: Final = 0x0020
ALG_KDF2: Final = 0x0021
ALG_KDF1_SP800_108: Final = 0x0022
ALG_ECC: Final = 0x0023
ALG_SYMCIPHER: Final = 0x0025
ALG_CAMELLIA: Final = 0x0026
ALG_CTR: Final = 0x0040
ALG_OFB: Final = 0x0041
ALG_CBC: Final = 0x0042
ALG_CFB: Final = 0x0043
ALG_ECB: Final = 0x0044

#: The hash algorithms this package computes with, and their digest sizes.
HASH_SIZES: Final[dict[int, int]] = {ALG_SHA1: 20, ALG_SHA256: 32, ALG_SHA384: 48, ALG_SHA512: 64}
HASH_ALGS: Final[dict[int, str]] = {
    ALG_SHA1: "sha1",
    ALG_SHA256: "sha256",
    ALG_SHA384: "sha384",
    ALG_SHA512: "sha512",
}
#: PCR bank names (as tpm2-tools spells them) to TPM_ALG_ID.
BANK_NAMES: Final[dict[str, int]] = {name: alg for alg, name in HASH_ALGS.items()}

# --- [P2] Table "TPM_ECC_CURVE" -------------------------------------------------------------------
ECC_NIST_P256: Final = 0x0003
ECC_NIST_P384: Final = 0x0004
ECC_NIST_P521: Final = 0x0005
_CURVES: Final[dict[int, tuple[str, int]]] = {
    ECC_NIST_P256: ("P-256", 32),
    ECC_NIST_P384: ("P-384", 48),
    ECC_NIST_P521: ("P-521", 66),
}

# --- [P2] Table "TPM_GENERATED", "TPM_ST" ---------------------------------------------------------
TPM_GENERATED_VALUE: Final = 0xFF544347
TPM_ST_ATTEST_QUOTE: Final = 0x8018

# --- [P2] Table "TPMA_OBJECT" (bit positions) -------------------------------------------------------
ATTR_FIXED_TPM: Final = 1 << 1
ATTR_ST_CLEAR: Final = 1 << 2
ATTR_FIXED_PARENT: Final = 1 << 4
ATTR_SENSITIVE_DATA_ORIGIN: Final = 1 << 5
ATTR_USER_WITH_AUTH: Final = 1 << 6
ATTR_ADMIN_WITH_POLICY: Final = 1 << 7
ATTR_NO_DA: Final = 1 << 10
ATTR_ENCRYPTED_DUPLICATION: Final = 1 << 11
ATTR_RESTRICTED: Final = 1 << 16
ATTR_DECRYPT: Final = 1 << 17
ATTR_SIGN: Final = 1 << 18
ATTR_X509_SIGN: Final = 1 << 19
#: Bits 0, 3, 8, 9, 12-15 and 20-31 are reserved ("shall be zero"; the TPM refuses them).
ATTR_RESERVED: Final = 0x0000_0001 | 0x0000_0008 | 0x0000_0300 | 0x0000_F000 | 0xFFF0_0000
_ATTR_NAMES: Final = (
    (ATTR_FIXED_TPM, "fixedTPM"),
    (ATTR_ST_CLEAR, "stClear"),
    (ATTR_FIXED_PARENT, "fixedParent"),
    (ATTR_SENSITIVE_DATA_ORIGIN, "sensitiveDataOrigin"),
    (ATTR_USER_WITH_AUTH, "userWithAuth"),
    (ATTR_ADMIN_WITH_POLICY, "adminWithPolicy"),
    (ATTR_NO_DA, "noDA"),
    (ATTR_ENCRYPTED_DUPLICATION, "encryptedDuplication"),
    (ATTR_RESTRICTED, "restricted"),
    (ATTR_DECRYPT, "decrypt"),
    (ATTR_SIGN, "sign"),
    (ATTR_X509_SIGN, "x509sign"),
)

# --- [P2] Table "TPM_RH" (permanent handles: the Qualified Name of a hierarchy is its handle) ------
HIERARCHY_OWNER: Final = 0x40000001
HIERARCHY_NULL: Final = 0x40000007
HIERARCHY_ENDORSEMENT: Final = 0x4000000B
HIERARCHY_PLATFORM: Final = 0x4000000C

# --- size limits ([P2] TPMU_HA, TPMT_HA, TPMU_NAME; MAX_RSA_KEY_BYTES, MAX_ECC_KEY_BYTES) ----------
_MAX_DIGEST: Final = 64
_MAX_HA: Final = 2 + _MAX_DIGEST  # sizeof(TPMT_HA): TPM2B_DATA, TPM2B_NAME
_MAX_RSA_BYTES: Final = 512  # RSA-4096
_MAX_ECC_BYTES: Final = 66  # P-521
#: TPML_PCR_SELECTION.count is at most HASH_COUNT; sizeofSelect at most PCR_SELECT_MAX (4: 32 PCRs).
_MAX_BANKS: Final = 16
_PCR_SELECT_MAX: Final = 4
#: Largest TPMT_PUBLIC accepted (an RSA-4096 key with a SHA-512 policy is ~600 bytes).
_MAX_PUBLIC: Final = 1024


def hash_digest(alg: int, data: bytes) -> bytes:
    """H_alg(data) for a TPM hash algorithm this package supports."""
    name = HASH_ALGS.get(alg)
    if name is None:
        raise ValueError(f"unsupported hash algorithm 0x{alg:04x}")
    return hashlib.new(name, data).digest()


def hash_alg_by_name(name: str) -> int:
    """TPM_ALG_ID of a bank name (``sha1``, ``sha256``, ``sha384``, ``sha512``)."""
    try:
        return BANK_NAMES[name]
    except KeyError:
        raise ValueError(f"unknown PCR bank {name!r}; expected one of {sorted(BANK_NAMES)}") from None


def _alg_name(alg: int) -> str:
    return HASH_ALGS.get(alg, f"0x{alg:04x}")


class _Reader:
    """A cursor over ``raw``; every read checks the bounds and names the field in errors."""

    __slots__ = ("base", "name", "pos", "raw")

    def __init__(self, raw: bytes, name: str, base: int = 0) -> None:
        self.raw = raw
        self.name = name
        self.base = base
        self.pos = 0

    def fail(self, detail: str, field: str, at: int | None = None) -> EvidenceParseError:
        offset = self.base + (self.pos if at is None else at)
        return EvidenceParseError(
            f"{self.name}.{field}: {detail}", field=f"{self.name}.{field}", offset=offset
        )

    def take(self, size: int, field: str) -> bytes:
        if size > len(self.raw) - self.pos:
            left = len(self.raw) - self.pos
            raise self.fail(f"need {size} bytes at offset {self.base + self.pos}, only {left} left", field)
        chunk = self.raw[self.pos : self.pos + size]
        self.pos += size
        return chunk

    def u8(self, field: str) -> int:
        return self.take(1, field)[0]

    def u16(self, field: str) -> int:
        value: int = struct.unpack(">H", self.take(2, field))[0]
        return value

    def u32(self, field: str) -> int:
        value: int = struct.unpack(">I", self.take(4, field))[0]
        return value

    def u64(self, field: str) -> int:
        value: int = struct.unpack(">Q", self.take(8, field))[0]
        return value

    def tpm2b(self, field: str, max_size: int) -> bytes:
        at = self.pos
        size = self.u16(f"{field}.size")
        if size > max_size:
            raise self.fail(f"size {size} exceeds the limit {max_size}", f"{field}.size", at)
        return self.take(size, field)

    def end(self) -> None:
        if self.pos != len(self.raw):
            raise self.fail(f"{len(self.raw) - self.pos} trailing bytes after the structure", "end")


# --- TPMS_ATTEST ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ClockInfo:
    """[P2] TPMS_CLOCK_INFO. ``reset_count``, ``restart_count`` (and the firmware version) are
    obfuscated by the TPM when the signing key is not in the endorsement or platform hierarchy."""

    clock: int
    reset_count: int
    restart_count: int
    safe: bool

    def to_dict(self) -> dict[str, int | bool]:
        return {
            "clock": self.clock,
            "reset_count": self.reset_count,
            "restart_count": self.restart_count,
            "safe": self.safe,
        }


@dataclass(frozen=True, slots=True)
class PcrSelection:
    """[P2] TPMS_PCR_SELECTION: one bank (``hash_alg``) and its selected PCR indices, ascending."""

    hash_alg: int
    size_of_select: int
    pcrs: tuple[int, ...]

    @property
    def bank(self) -> str:
        return _alg_name(self.hash_alg)


@dataclass(frozen=True, slots=True)
class Attest:
    """[P2] TPMS_ATTEST with attested = TPMS_QUOTE_INFO. ``raw`` is exactly what the AK signs."""

    raw: bytes
    qualified_signer: bytes
    extra_data: bytes
    clock_info: ClockInfo
    firmware_version: int
    pcr_select: tuple[PcrSelection, ...]
    pcr_digest: bytes


def _parse_pcr_selection(r: _Reader) -> tuple[PcrSelection, ...]:
    count = r.u32("pcrSelect.count")
    if count > _MAX_BANKS:
        raise r.fail(f"{count} banks, at most {_MAX_BANKS}", "pcrSelect.count", r.pos - 4)
    out: list[PcrSelection] = []
    seen: set[int] = set()
    for i in range(count):
        field = f"pcrSelect[{i}]"
        at = r.pos
        alg = r.u16(f"{field}.hash")
        size = r.u8(f"{field}.sizeofSelect")
        if size > _PCR_SELECT_MAX:
            raise r.fail(f"sizeofSelect {size} exceeds {_PCR_SELECT_MAX}", f"{field}.sizeofSelect", r.pos - 1)
        bitmap = r.take(size, f"{field}.pcrSelect")
        if alg in seen:
            raise r.fail(f"bank {_alg_name(alg)} selected twice", f"{field}.hash", at)
        seen.add(alg)
        pcrs = tuple(j for j in range(size * 8) if bitmap[j // 8] >> (j % 8) & 1)
        out.append(PcrSelection(hash_alg=alg, size_of_select=size, pcrs=pcrs))
    return tuple(out)


def parse_pcr_selection(raw: bytes, *, name: str = "TPML_PCR_SELECTION") -> tuple[PcrSelection, ...]:
    """Parse a marshalled TPML_PCR_SELECTION that fills ``raw`` exactly."""
    r = _Reader(raw, name)
    out = _parse_pcr_selection(r)
    r.end()
    return out


#: [P2] TPMS_CLOCK_INFO: clock (UINT64), resetCount, restartCount (UINT32), safe (TPMI_YES_NO, a byte).
CLOCK_INFO_SIZE: Final = 8 + 4 + 4 + 1
#: [P2] TPMS_ATTEST, the fixed part before qualifiedSigner's name: magic (TPM_GENERATED, UINT32) at 0,
#: type (TPMI_ST_ATTEST, UINT16) at 4, qualifiedSigner.size (UINT16) at 6.
ATTEST_MAGIC_START: Final = 0
ATTEST_TYPE_START: Final = ATTEST_MAGIC_START + 4
ATTEST_SIGNER_START: Final = ATTEST_TYPE_START + 2


def parse_attest(raw: bytes) -> Attest:
    """Parse a TPMS_ATTEST of type TPM_ST_ATTEST_QUOTE that fills ``raw`` exactly.

    [P2] Table "TPMS_ATTEST" with TPMU_ATTEST = Table "TPMS_QUOTE_INFO", big-endian; Q and E are
    the sizes of qualifiedSigner's name and of extraData, N the selection's length:

    ====================  ===============  =====================================================
    offset                size             field
    ====================  ===============  =====================================================
    0                     4                magic: TPM_GENERATED_VALUE 0xFF544347
    4                     2                type: TPM_ST_ATTEST_QUOTE 0x8018
    6                     2 + Q            qualifiedSigner (TPM2B_NAME, Q <= 2 + 64)
    8 + Q                 2 + E            extraData (TPM2B_DATA, E <= 2 + 64; the nonce binding)
    10 + Q + E            17               clockInfo: clock, resetCount, restartCount, safe (0/1)
    27 + Q + E            8                firmwareVersion
    35 + Q + E            N                attested.quote.pcrSelect (TPML_PCR_SELECTION: count,
                                           then per bank hash, sizeofSelect <= 4, the bitmap)
    35 + Q + E + N        2 + D            attested.quote.pcrDigest (TPM2B_DIGEST, D <= 64)
    ====================  ===============  =====================================================

    The structure must end there; every error names the field and its offset in ``raw``."""
    r = _Reader(raw, "TPMS_ATTEST")
    magic = r.u32("magic")
    if magic != TPM_GENERATED_VALUE:
        detail = f"0x{magic:08x} is not TPM_GENERATED_VALUE 0x{TPM_GENERATED_VALUE:08x}"
        raise r.fail(detail, "magic", ATTEST_MAGIC_START)
    kind = r.u16("type")
    if kind != TPM_ST_ATTEST_QUOTE:
        detail = f"0x{kind:04x} is not TPM_ST_ATTEST_QUOTE 0x{TPM_ST_ATTEST_QUOTE:04x}"
        raise r.fail(detail, "type", ATTEST_TYPE_START)
    assert r.pos == ATTEST_SIGNER_START
    qualified_signer = r.tpm2b("qualifiedSigner", _MAX_HA)
    extra_data = r.tpm2b("extraData", _MAX_HA)
    clock_start = r.pos
    clock = r.u64("clockInfo.clock")
    reset_count = r.u32("clockInfo.resetCount")
    restart_count = r.u32("clockInfo.restartCount")
    at = r.pos
    safe = r.u8("clockInfo.safe")
    if safe > 1:
        raise r.fail(f"TPMI_YES_NO is {safe}, not 0 or 1", "clockInfo.safe", at)
    assert r.pos == clock_start + CLOCK_INFO_SIZE
    firmware_version = r.u64("firmwareVersion")
    pcr_select = _parse_pcr_selection(r)
    pcr_digest = r.tpm2b("pcrDigest", _MAX_DIGEST)
    r.end()
    return Attest(
        raw=raw,
        qualified_signer=qualified_signer,
        extra_data=extra_data,
        clock_info=ClockInfo(clock, reset_count, restart_count, bool(safe)),
        firmware_version=firmware_version,
        pcr_select=pcr_select,
        pcr_digest=pcr_digest,
    )


# --- TPMT_SIGNATURE -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TpmSignature:
    """[P2] TPMT_SIGNATURE for RSASSA, RSAPSS or ECDSA. ``sig`` is the RSA signature, or ``r``/``s``."""

    sig_alg: int
    hash_alg: int
    sig: bytes = b""
    r: bytes = b""
    s: bytes = b""

    @classmethod
    def raw_rsassa(cls, sig: bytes, hash_alg: int = ALG_SHA256) -> TpmSignature:
        """A bare RSASSA-PKCS1-v1_5 signature (Azure's vTPM quote), with the hash it was made with."""
        if not sig or len(sig) > _MAX_RSA_BYTES:
            raise EvidenceParseError(
                f"raw RSA signature: {len(sig)} bytes, expected 1 to {_MAX_RSA_BYTES}", field="signature"
            )
        if hash_alg not in HASH_SIZES:
            raise ValueError(f"unsupported hash algorithm 0x{hash_alg:04x}")
        return cls(sig_alg=ALG_RSASSA, hash_alg=hash_alg, sig=sig)

    def marshal(self) -> bytes:
        """The TPMT_SIGNATURE bytes (tpm2-tools' signature file format)."""
        head = struct.pack(">HH", self.sig_alg, self.hash_alg)
        if self.sig_alg == ALG_ECDSA:
            return head + _b(self.r) + _b(self.s)
        return head + _b(self.sig)

    @property
    def scheme(self) -> str:
        names = {ALG_RSASSA: "rsassa", ALG_RSAPSS: "rsapss", ALG_ECDSA: "ecdsa"}
        return f"{names[self.sig_alg]}-{_alg_name(self.hash_alg)}"


def _b(data: bytes) -> bytes:
    return struct.pack(">H", len(data)) + data


def parse_signature(raw: bytes) -> TpmSignature:
    """Parse a TPMT_SIGNATURE (RSASSA, RSAPSS, ECDSA with SHA-1/256/384/512) filling ``raw`` exactly."""
    r = _Reader(raw, "TPMT_SIGNATURE")
    sig_alg = r.u16("sigAlg")
    if sig_alg not in (ALG_RSASSA, ALG_RSAPSS, ALG_ECDSA):
        raise r.fail(f"signature scheme 0x{sig_alg:04x} is not RSASSA, RSAPSS or ECDSA", "sigAlg", 0)
    hash_alg = r.u16("hash")
    if hash_alg not in HASH_SIZES:
        raise r.fail(f"hash 0x{hash_alg:04x} is not SHA-1, SHA-256, SHA-384 or SHA-512", "hash", 2)
    if sig_alg == ALG_ECDSA:
        sr = r.tpm2b("signature.signatureR", _MAX_ECC_BYTES)
        ss = r.tpm2b("signature.signatureS", _MAX_ECC_BYTES)
        r.end()
        return TpmSignature(sig_alg=sig_alg, hash_alg=hash_alg, r=sr, s=ss)
    sig = r.tpm2b("signature.sig", _MAX_RSA_BYTES)
    r.end()
    return TpmSignature(sig_alg=sig_alg, hash_alg=hash_alg, sig=sig)


# --- TPMT_PUBLIC ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Scheme:
    """A scheme selector and its hash (``ALG_NULL`` when the scheme takes none); ECDAA adds a count."""

    alg: int
    hash_alg: int = ALG_NULL
    count: int = 0


@dataclass(frozen=True, slots=True)
class SymDef:
    """[P2] TPMT_SYM_DEF_OBJECT: the storage key's symmetric cipher (``alg`` NULL: none)."""

    alg: int
    key_bits: int = 0
    mode: int = ALG_NULL


@dataclass(frozen=True, slots=True)
class TpmPublic:
    """[P2] TPMT_PUBLIC of an RSA or ECC key. ``raw`` is the marshalled TPMT_PUBLIC (no size prefix)."""

    raw: bytes
    type: int
    name_alg: int
    attributes: int
    auth_policy: bytes
    symmetric: SymDef
    scheme: Scheme
    #: RSA: keyBits and the exponent (0 in the structure means 65537: given here as 65537).
    key_bits: int
    exponent: int
    #: RSA: the modulus; ECC: the point (x, y).
    modulus: bytes
    curve: int
    kdf: Scheme
    x: bytes
    y: bytes

    @property
    def name(self) -> bytes:
        """[P1] 16 the object's Name: nameAlg || H_nameAlg(TPMT_PUBLIC)."""
        return struct.pack(">H", self.name_alg) + hash_digest(self.name_alg, self.raw)

    def public_key(self) -> rsa.RSAPublicKey | ec.EllipticCurvePublicKey:
        """The key as a ``cryptography`` public key (its values were checked at parse time)."""
        if self.type == ALG_RSA:
            return rsa.RSAPublicNumbers(self.exponent, int.from_bytes(self.modulus, "big")).public_key()
        curve = {ECC_NIST_P256: ec.SECP256R1(), ECC_NIST_P384: ec.SECP384R1(), ECC_NIST_P521: ec.SECP521R1()}
        size = _CURVES[self.curve][1]
        point = b"\x04" + self.x.rjust(size, b"\x00") + self.y.rjust(size, b"\x00")
        return ec.EllipticCurvePublicKey.from_encoded_point(curve[self.curve], point)

    @property
    def attribute_names(self) -> tuple[str, ...]:
        return tuple(name for bit, name in _ATTR_NAMES if self.attributes & bit)

    def has(self, bits: int) -> bool:
        return self.attributes & bits == bits

    @property
    def key_type(self) -> str:
        if self.type == ALG_RSA:
            return f"rsa-{self.key_bits}"
        return "ecc-" + _CURVES[self.curve][0]


def _scheme(r: _Reader, field: str, *, allowed: frozenset[int]) -> Scheme:
    at = r.pos
    alg = r.u16(f"{field}.scheme")
    if alg not in allowed:
        raise r.fail(f"scheme 0x{alg:04x} is not allowed here", f"{field}.scheme", at)
    if alg == ALG_NULL or alg == ALG_RSAES:
        return Scheme(alg)
    at = r.pos
    hash_alg = r.u16(f"{field}.hashAlg")
    if hash_alg not in HASH_SIZES:
        raise r.fail(f"hash 0x{hash_alg:04x} is not supported", f"{field}.hashAlg", at)
    count = r.u16(f"{field}.count") if alg == ALG_ECDAA else 0
    return Scheme(alg, hash_alg, count)


def _symdef(r: _Reader) -> SymDef:
    at = r.pos
    alg = r.u16("parameters.symmetric.algorithm")
    if alg == ALG_NULL:
        return SymDef(alg)
    if alg not in (ALG_AES, ALG_SM4, ALG_CAMELLIA):
        detail = f"symmetric algorithm 0x{alg:04x} is not AES, SM4, CAMELLIA or NULL"
        raise r.fail(detail, "parameters.symmetric.algorithm", at)
    at = r.pos
    bits = r.u16("parameters.symmetric.keyBits")
    if bits not in (128, 192, 256):
        raise r.fail(f"keyBits {bits} is not 128, 192 or 256", "parameters.symmetric.keyBits", at)
    at = r.pos
    mode = r.u16("parameters.symmetric.mode")
    if mode not in (ALG_CTR, ALG_OFB, ALG_CBC, ALG_CFB, ALG_ECB):
        raise r.fail(f"mode 0x{mode:04x} is not a block cipher mode", "parameters.symmetric.mode", at)
    return SymDef(alg, bits, mode)


_RSA_SCHEMES: Final = frozenset({ALG_NULL, ALG_RSASSA, ALG_RSAPSS, ALG_RSAES, ALG_OAEP})
_ECC_SCHEMES: Final = frozenset({ALG_NULL, ALG_ECDSA, ALG_ECDH, ALG_ECDAA, ALG_ECSCHNORR, ALG_SM2})
_KDF_SCHEMES: Final = frozenset({ALG_NULL, ALG_MGF1, ALG_KDF1_SP800_56A, ALG_KDF2, ALG_KDF1_SP800_108})


def _parse_public(r: _Reader) -> TpmPublic:
    start = r.pos
    at = r.pos
    kind = r.u16("type")
    if kind not in (ALG_RSA, ALG_ECC):
        raise r.fail(f"object type 0x{kind:04x} is not RSA (0x0001) or ECC (0x0023)", "type", at)
    at = r.pos
    name_alg = r.u16("nameAlg")
    if name_alg not in HASH_SIZES:
        raise r.fail(f"nameAlg 0x{name_alg:04x} is not SHA-1, SHA-256, SHA-384 or SHA-512", "nameAlg", at)
    at = r.pos
    attributes = r.u32("objectAttributes")
    if attributes & ATTR_RESERVED:
        raise r.fail(f"reserved bits 0x{attributes & ATTR_RESERVED:08x} are set", "objectAttributes", at)
    auth_policy = r.tpm2b("authPolicy", _MAX_DIGEST)
    if auth_policy and len(auth_policy) != HASH_SIZES[name_alg]:
        detail = f"{len(auth_policy)} bytes, {_alg_name(name_alg)} digests are {HASH_SIZES[name_alg]}"
        raise r.fail(detail, "authPolicy", at + 4)
    symmetric = _symdef(r)
    key_bits = exponent = curve = 0
    modulus = x = y = b""
    kdf = Scheme(ALG_NULL)
    if kind == ALG_RSA:
        scheme = _scheme(r, "parameters.scheme", allowed=_RSA_SCHEMES)
        at = r.pos
        key_bits = r.u16("parameters.keyBits")
        if key_bits not in (1024, 2048, 3072, 4096):
            raise r.fail(f"RSA keyBits {key_bits} is not 1024, 2048, 3072 or 4096", "parameters.keyBits", at)
        at = r.pos
        exponent = r.u32("parameters.exponent") or 65537
        if exponent < 3 or exponent % 2 == 0:
            raise r.fail(f"RSA exponent {exponent} is not an odd number >= 3", "parameters.exponent", at)
        at = r.pos
        modulus = r.tpm2b("unique.rsa", _MAX_RSA_BYTES)
        if len(modulus) * 8 != key_bits or not modulus[0] & 0x80:
            raise r.fail(f"modulus of {len(modulus)} bytes is not a {key_bits}-bit number", "unique.rsa", at)
    else:
        scheme = _scheme(r, "parameters.scheme", allowed=_ECC_SCHEMES)
        at = r.pos
        curve = r.u16("parameters.curveID")
        if curve not in _CURVES:
            raise r.fail(f"curve 0x{curve:04x} is not NIST P-256, P-384 or P-521", "parameters.curveID", at)
        kdf = _scheme(r, "parameters.kdf", allowed=_KDF_SCHEMES)
        size = _CURVES[curve][1]
        at = r.pos
        x = r.tpm2b("unique.ecc.x", _MAX_ECC_BYTES)
        y = r.tpm2b("unique.ecc.y", _MAX_ECC_BYTES)
        if not 0 < len(x) <= size or not 0 < len(y) <= size:
            detail = f"point coordinates of {len(x)} and {len(y)} bytes, {_CURVES[curve][0]} has {size}"
            raise r.fail(detail, "unique.ecc", at)
    public = TpmPublic(
        raw=r.raw[start : r.pos],
        type=kind,
        name_alg=name_alg,
        attributes=attributes,
        auth_policy=auth_policy,
        symmetric=symmetric,
        scheme=scheme,
        key_bits=key_bits,
        exponent=exponent,
        modulus=modulus,
        curve=curve,
        kdf=kdf,
        x=x,
        y=y,
    )
    try:
        public.public_key()
    except ValueError as exc:
        raise r.fail(f"not a valid public key ({exc})", "unique", start) from None
    return public


def parse_tpmt_public(raw: bytes, *, name: str = "TPMT_PUBLIC") -> TpmPublic:
    """Parse a TPMT_PUBLIC (RSA or ECC) that fills ``raw`` exactly."""
    if len(raw) > _MAX_PUBLIC:
        raise EvidenceParseError(f"{name}: {len(raw)} bytes, at most {_MAX_PUBLIC}", field=name, offset=0)
    r = _Reader(raw, name)
    public = _parse_public(r)
    r.end()
    return public


def parse_tpm2b_public(raw: bytes, *, name: str = "TPM2B_PUBLIC") -> TpmPublic:
    """Parse a TPM2B_PUBLIC (size, then a TPMT_PUBLIC of exactly that size) filling ``raw`` exactly."""
    r = _Reader(raw, name)
    body = r.tpm2b("publicArea", _MAX_PUBLIC)
    r.end()
    return parse_tpmt_public(body, name=f"{name}.publicArea")


def qualified_name(parent_qualified_name: bytes, public: TpmPublic) -> bytes:
    """[P1] the Qualified Name of an object: nameAlg || H_nameAlg(QN(parent) || Name)."""
    return struct.pack(">H", public.name_alg) + hash_digest(
        public.name_alg, parent_qualified_name + public.name
    )


def hierarchy_qualified_name(handle: int) -> bytes:
    """The Qualified Name of a hierarchy (its handle; e.g. a primary key's parent)."""
    return struct.pack(">I", handle)
