"""Signed checkpoints of the audit chain head, kept outside the database.

A checkpoint states "record ``seq`` of the audit chain had hash ``hash`` at ``time``", signed with
an Ed25519 key that lives in the data dir (:data:`CHECKPOINT_KEY_FILE`, 0600), never in the
database. They are appended to a JSON-lines file in the data dir (:data:`CHECKPOINT_FILE`), and
optionally logged (syslog/journald through the logging set-up). Since every record's hash covers
the one before it, a checkpoint fixes the whole chain up to ``seq``: a database whose chain is
shorter, or reaches another hash at ``seq``, has lost or rewritten history.

Each checkpoint also repeats ``signed_from`` (the first record that must carry a signature: records
before it predate signing) and ``record_key`` (the public half of the record signing key derived
from the root key), so neither can be changed in the database alone.

One line: the JCS (RFC 8785) of ``{"v": 1, "seq", "hash", "time", "signed_from", "record_key",
"key_id", "sig"}``; ``sig`` is the base64 Ed25519 signature of ``"keybroker/audit-checkpoint/v1\\n"``
followed by the JCS of the other fields.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import rfc8785
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from keybroker.errors import Conflict, InvalidInput

CHECKPOINT_KEY_FILE = "audit-checkpoint-key.pem"
CHECKPOINT_FILE = "audit-checkpoints.jsonl"
VERSION = 1
_DOMAIN = b"keybroker/audit-checkpoint/v1\n"
_FIELDS = ("v", "seq", "hash", "time", "signed_from", "record_key", "key_id", "sig")
_HEX64 = re.compile(r"[0-9a-f]{64}")
_TIME = "%Y-%m-%dT%H:%M:%S.%fZ"
#: How much of the file's end is read to find the last checkpoint (lines are ~350 bytes).
_TAIL = 64 * 1024


class CheckpointError(Exception):
    """A line of the checkpoint file that does not parse or verify (``line`` counts from 1)."""

    def __init__(self, line: int, why: str) -> None:
        super().__init__(f"line {line}: {why}")
        self.line = line
        self.why = why


def key_id(public_key: Ed25519PublicKey) -> str:
    """The first 16 bytes of SHA-256 over the raw public key, hex."""
    return hashlib.sha256(raw_public(public_key)).hexdigest()[:32]


def raw_public(public_key: Ed25519PublicKey) -> bytes:
    return public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def format_time(value: datetime) -> str:
    if value.tzinfo is None:  # SQLite returns naive datetimes; we store UTC
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).strftime(_TIME)


@dataclass(frozen=True)
class Checkpoint:
    seq: int
    hash: str
    time: datetime
    signed_from: int
    #: The record signing key (raw Ed25519 public key, base64); None until a replica has unsealed.
    record_key: str | None
    #: :func:`key_id` of the checkpoint key that signed this.
    key_id: str
    sig: str

    def body(self) -> dict[str, Any]:
        return {
            "v": VERSION,
            "seq": self.seq,
            "hash": self.hash,
            "time": format_time(self.time),
            "signed_from": self.signed_from,
            "record_key": self.record_key,
            "key_id": self.key_id,
        }

    def to_json(self) -> str:
        return rfc8785.dumps({**self.body(), "sig": self.sig}).decode()

    def verify(self, public_key: Ed25519PublicKey) -> None:
        """Raise ``ValueError`` unless ``public_key`` signed this checkpoint."""
        if self.key_id != key_id(public_key):
            raise ValueError(f"signed by checkpoint key {self.key_id}, not {key_id(public_key)}")
        try:
            public_key.verify(base64.b64decode(self.sig, validate=True), _DOMAIN + rfc8785.dumps(self.body()))
        except (InvalidSignature, binascii.Error, ValueError):
            raise ValueError("the signature does not verify") from None


def parse(text: str, public_key: Ed25519PublicKey) -> Checkpoint:
    """One line, strictly: the exact fields with their types, and a signature by ``public_key``."""
    try:
        obj = json.loads(text)
    except json.JSONDecodeError:
        raise ValueError("not JSON") from None
    if not isinstance(obj, dict) or sorted(obj) != sorted(_FIELDS):
        raise ValueError(f"not a checkpoint: the fields must be {', '.join(_FIELDS)}")
    ints = (obj["v"], obj["seq"], obj["signed_from"])
    if any(not isinstance(v, int) or isinstance(v, bool) for v in ints) or obj["v"] != VERSION:
        raise ValueError(f"v, seq and signed_from must be integers and v {VERSION}")
    if obj["seq"] < 0 or obj["signed_from"] < 1:
        raise ValueError("seq must be >= 0 and signed_from >= 1")
    strings = (obj["hash"], obj["time"], obj["key_id"], obj["sig"])
    if any(not isinstance(v, str) for v in strings) or not _HEX64.fullmatch(obj["hash"]):
        raise ValueError("hash must be 64 lowercase hex digits; time, key_id and sig strings")
    if obj["record_key"] is not None and not isinstance(obj["record_key"], str):
        raise ValueError("record_key must be a string or null")
    try:
        when = datetime.strptime(obj["time"], _TIME).replace(tzinfo=UTC)
    except ValueError:
        raise ValueError(f"time {obj['time']!r} is not {_TIME}") from None
    cp = Checkpoint(
        obj["seq"], obj["hash"], when, obj["signed_from"], obj["record_key"], obj["key_id"], obj["sig"]
    )
    cp.verify(public_key)
    return cp


class CheckpointSigner:
    def __init__(self, key: Ed25519PrivateKey) -> None:
        self._key = key
        self.public_key = key.public_key()
        self.key_id = key_id(self.public_key)

    def sign(
        self, *, seq: int, hash: str, time: datetime, signed_from: int, record_key: str | None
    ) -> Checkpoint:
        unsigned = Checkpoint(seq, hash, time, signed_from, record_key, self.key_id, "")
        sig = self._key.sign(_DOMAIN + rfc8785.dumps(unsigned.body()))
        return Checkpoint(
            seq, hash, time, signed_from, record_key, self.key_id, base64.b64encode(sig).decode()
        )


def load_or_create_key(path: Path) -> Ed25519PrivateKey:
    """The checkpoint key in the data dir, created (0600) on first start."""
    if not path.exists():
        key = Ed25519PrivateKey.generate()
        pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # another process on this data dir created it first
            pass
        else:
            with os.fdopen(fd, "wb") as f:
                f.write(pem)
                f.flush()
                os.fsync(f.fileno())
            return key
    loaded = serialization.load_pem_private_key(path.read_bytes(), None)
    if not isinstance(loaded, Ed25519PrivateKey):
        raise InvalidInput(f"{path} is not an Ed25519 private key", field="data_dir")
    return loaded


def load_public_key(path: Path) -> Ed25519PublicKey:
    """The checkpoint public key from ``path``: the data dir's private key file, or, to check
    checkpoints away from the service, the public key in PEM (SubjectPublicKeyInfo) or raw in
    base64 (``public_key`` of ``GET /kbs/v1/audit/checkpoint``)."""
    try:
        pem = path.read_bytes()
    except FileNotFoundError:
        raise InvalidInput(f"no audit checkpoint key at {path}", field="checkpoint_key") from None
    try:
        if b"-----BEGIN" not in pem:
            return Ed25519PublicKey.from_public_bytes(base64.b64decode(pem.strip(), validate=True))
        if b"PRIVATE KEY" in pem:
            private = serialization.load_pem_private_key(pem, None)
            if isinstance(private, Ed25519PrivateKey):
                return private.public_key()
        else:
            public = serialization.load_pem_public_key(pem)
            if isinstance(public, Ed25519PublicKey):
                return public
    except (binascii.Error, ValueError):
        pass
    raise InvalidInput(f"{path} holds no Ed25519 key (PEM, or raw in base64)", field="checkpoint_key")


class CheckpointFile:
    """The append-only JSON-lines sink (0600). A last line without its newline is a write cut short
    by a crash and is skipped."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def append(self, cp: Checkpoint) -> None:
        """Write one line and wait for the disk (``O_APPEND``: whole lines, never interleaved)."""
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, cp.to_json().encode() + b"\n")
            os.fsync(fd)
        finally:
            os.close(fd)

    def last(self, public_key: Ed25519PublicKey) -> Checkpoint | None:
        """The newest checkpoint (read from the file's end); ``Conflict`` when it does not verify."""
        try:
            with open(self.path, "rb") as f:
                size = f.seek(0, os.SEEK_END)
                f.seek(max(0, size - _TAIL))
                tail = f.read()
        except FileNotFoundError:
            return None
        lines = tail.split(b"\n")[:-1]  # the part after the last newline is empty or cut short
        if size > _TAIL:
            lines = lines[1:]  # the first may be the end of a longer line
        if not lines:
            return None
        try:
            return parse(lines[-1].decode("utf-8", errors="replace"), public_key)
        except ValueError as exc:
            raise Conflict(
                f"the last audit checkpoint in {self.path} does not verify ({exc}): the file was "
                "changed or the checkpoint key replaced; keep both for investigation"
            ) from None

    def read_all(self, public_key: Ed25519PublicKey) -> list[Checkpoint]:
        """Every checkpoint, each verified; ``CheckpointError`` names the first bad line."""
        out: list[Checkpoint] = []
        with open(self.path, "rb") as f:
            for number, raw in enumerate(f, 1):
                if not raw.endswith(b"\n"):
                    break  # cut short by a crash while it was written
                try:
                    out.append(parse(raw.decode("utf-8", errors="replace"), public_key))
                except ValueError as exc:
                    raise CheckpointError(number, str(exc)) from None
        return out
