"""A real software TPM (swtpm, libtpms) driven with tpm2-tools, for the TPM tests.

``Swtpm(tmp_path)`` manufactures a TPM 2.0 in a state dir under ``tmp_path`` (``swtpm_setup``
with an RSA-2048 and an ECC P-384 EK and their certificates from swtpm's local CA, also under
``tmp_path``), starts ``swtpm socket`` on free loopback ports in a process group of its own
(``tests/helpers/procs.py``) and runs tpm2-tools against it (``TPM2TOOLS_TCTI=swtpm:...``).
Without a resource manager transient objects pile up, so every command is followed by a flush.

swtpm has no firmware event log: tests that need one extend PCRs themselves and build the log
that matches (:func:`build_event_log`).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import struct
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from tests.helpers import procs

TOOLS = (
    "swtpm",
    "swtpm_setup",
    "swtpm_localca",
    "tpm2_createak",
    "tpm2_quote",
    "tpm2_checkquote",
    "tpm2_activatecredential",
)
MISSING = [t for t in TOOLS if shutil.which(t) is None]
SKIP_REASON = (
    f"swtpm/tpm2-tools not installed (missing {', '.join(MISSING)}): run scripts/install-system-deps.sh "
    "as root (Debian packages swtpm, swtpm-tools, tpm2-tools)"
)
requires_swtpm = pytest.mark.skipif(bool(MISSING), reason=SKIP_REASON)

#: Persistent handles swtpm_setup gives the EKs ([TCG EK Credential Profile] low range RSA, and ECC).
EK_HANDLES = {"rsa": "0x81010001", "ecc": "0x81010016"}
ENDORSEMENT_QN = struct.pack(">I", 0x4000000B)


def _free_port_pair() -> int:
    """A free loopback port p with p + 1 free too (the swtpm TCTI finds the control port at p + 1)."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port: int = s.getsockname()[1]
        if port >= 65535:
            continue
        try:
            with socket.socket() as s1, socket.socket() as s2:
                s1.bind(("127.0.0.1", port))
                s2.bind(("127.0.0.1", port + 1))
        except OSError:
            continue
        return port
    raise RuntimeError("no free pair of loopback ports")


@dataclass(frozen=True)
class Ak:
    """An AK made by ``tpm2_createak``: its context file, TPM2B_PUBLIC and Name."""

    ctx: Path
    public: bytes
    name: bytes
    pub_path: Path
    scheme: str


@dataclass(frozen=True)
class Quote:
    message: bytes
    signature: bytes
    pcrs: dict[str, dict[int, bytes]]
    msg_path: Path
    sig_path: Path
    pcrs_path: Path


class Swtpm:
    """One manufactured, running swtpm; use as a context manager."""

    def __init__(self, tmp_path: Path, *, pcr_banks: str = "sha1,sha256,sha384") -> None:
        self.dir = tmp_path / "swtpm"
        self.state = self.dir / "state"
        self.ca_dir = self.dir / "localca"
        self.ek_dir = self.dir / "ek-certs"
        self.work = self.dir / "work"
        for d in (self.state, self.ca_dir, self.ek_dir, self.work):
            d.mkdir(parents=True, exist_ok=True)
        self.pcr_banks = pcr_banks
        self.proc: subprocess.Popen[Any] | None = None
        self.port = 0
        self._n = 0

    # --- lifecycle ---------------------------------------------------------------------------------

    def manufacture(self) -> None:
        conf = self.dir / "localca.conf"
        conf.write_text(
            f"statedir = {self.ca_dir}\nsigningkey = {self.ca_dir}/signkey.pem\n"
            f"issuercert = {self.ca_dir}/issuercert.pem\ncertserial = {self.ca_dir}/certserial\n"
        )
        options = self.dir / "localca.options"
        options.write_text(
            "--platform-manufacturer keybroker-tests\n--platform-version 2.1\n--platform-model swtpm\n"
        )
        setup = self.dir / "swtpm_setup.conf"
        setup.write_text(
            f"create_certs_tool = {shutil.which('swtpm_localca')}\ncreate_certs_tool_config = {conf}\n"
            f"create_certs_tool_options = {options}\nactive_pcr_banks = {self.pcr_banks}\n"
        )
        subprocess.run(
            [
                "swtpm_setup",
                "--tpm2",
                "--tpmstate",
                str(self.state),
                "--create-ek-cert",
                "--config",
                str(setup),
                "--pcr-banks",
                self.pcr_banks,
                "--write-ek-cert-files",
                str(self.ek_dir),
            ],
            check=True,
            capture_output=True,
            timeout=120,
        )

    def start(self) -> None:
        for _ in range(5):
            self.port = _free_port_pair()
            ctrl = self.port + 1
            log = (self.dir / "swtpm.log").open("ab")
            self.proc = procs.spawn(
                [
                    "swtpm",
                    "socket",
                    "--tpmstate",
                    f"dir={self.state}",
                    "--tpm2",
                    "--server",
                    f"type=tcp,port={self.port},bindaddr=127.0.0.1",
                    "--ctrl",
                    f"type=tcp,port={ctrl},bindaddr=127.0.0.1",
                    "--flags",
                    "not-need-init,startup-clear",
                ],
                stdout=log,
                stderr=log,
            )
            log.close()
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and self.proc.poll() is None:
                try:
                    socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                    return
                except OSError:
                    time.sleep(0.05)
            procs.stop(self.proc)  # lost the port race or did not come up: try other ports
        raise RuntimeError(f"swtpm did not start; see {self.dir / 'swtpm.log'}")

    def stop(self) -> None:
        if self.proc is not None:
            procs.stop(self.proc)
            self.proc = None

    def __enter__(self) -> Swtpm:
        self.manufacture()
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- tpm2-tools ----------------------------------------------------------------------------------

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "TPM2TOOLS_TCTI": f"swtpm:host=127.0.0.1,port={self.port}"}

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[bytes]:
        """Run one tpm2-tools command, then flush the transient objects and sessions it left."""
        try:
            return subprocess.run(
                list(args), env=self.env, cwd=self.work, capture_output=True, check=check, timeout=60
            )
        except subprocess.CalledProcessError as exc:
            raise RuntimeError(f"{' '.join(args)} failed: {exc.stderr.decode(errors='replace')}") from None
        finally:
            for kind in ("-t", "-l", "-s"):
                subprocess.run(["tpm2_flushcontext", kind], env=self.env, capture_output=True, timeout=30)

    def path(self, stem: str) -> Path:
        self._n += 1
        return self.work / f"{self._n:03d}-{stem}"

    # --- keys and certificates ----------------------------------------------------------------------

    def ek_public(self, kind: str = "rsa") -> bytes:
        """The EK's TPM2B_PUBLIC, read from its persistent handle."""
        out = self.path(f"ek-{kind}.pub")
        self.run("tpm2_readpublic", "-c", EK_HANDLES[kind], "-o", str(out), "-f", "tss")
        return out.read_bytes()

    def ek_certificate(self, kind: str = "rsa") -> bytes:
        """The EK certificate (DER) swtpm_setup had its local CA issue."""
        name = "ek-rsa2048.crt" if kind == "rsa" else "ek-secp384r1.crt"
        return (self.ek_dir / name).read_bytes()

    def ca_certificates(self) -> tuple[bytes, bytes]:
        """(local CA issuer certificate, local CA root certificate), both PEM."""
        return (self.ca_dir / "issuercert.pem").read_bytes(), (
            self.ca_dir / "swtpm-localca-rootca-cert.pem"
        ).read_bytes()

    def create_ak(
        self, *, alg: str = "rsa", hash_alg: str = "sha256", scheme: str = "rsassa", ek: str = "rsa"
    ) -> Ak:
        ctx, pub, name, priv = (self.path(s) for s in ("ak.ctx", "ak.pub", "ak.name", "ak.priv"))
        self.run(
            "tpm2_createak",
            "-C",
            EK_HANDLES[ek],
            "-c",
            str(ctx),
            "-G",
            alg,
            "-g",
            hash_alg,
            "-s",
            scheme,
            "-u",
            str(pub),
            "-n",
            str(name),
            "-f",
            "tss",
            "-r",
            str(priv),
        )
        return Ak(ctx=ctx, public=pub.read_bytes(), name=name.read_bytes(), pub_path=pub, scheme=scheme)

    # --- PCRs, quotes, credentials ----------------------------------------------------------------------

    def pcr_extend(self, index: int, digests: dict[str, bytes]) -> None:
        spec = ",".join(f"{bank}={d.hex()}" for bank, d in digests.items())
        self.run("tpm2_pcrextend", f"{index}:{spec}")

    def quote(self, ak: Ak, selection: str, nonce: bytes, *, hash_alg: str = "sha256") -> Quote:
        msg, sig, pcrs = self.path("q.msg"), self.path("q.sig"), self.path("q.pcrs")
        args = [
            "tpm2_quote",
            "-c",
            str(ak.ctx),
            "-l",
            selection,
            "-m",
            str(msg),
            "-s",
            str(sig),
            "-o",
            str(pcrs),
            "-g",
            hash_alg,
            "--scheme",
            ak.scheme,
        ]
        if nonce:
            args += ["-q", nonce.hex()]
        self.run(*args)
        return Quote(msg.read_bytes(), sig.read_bytes(), parse_tools_pcrs(pcrs.read_bytes()), msg, sig, pcrs)

    def activate_credential(
        self, ak: Ak, credential_blob: bytes, encrypted_secret: bytes, *, ek: str = "rsa"
    ) -> bytes:
        """TPM2_ActivateCredential with the EK (endorsement policy session) and the AK: the secret."""
        blob = self.path("cred.blob")
        blob.write_bytes(tools_credential_file(credential_blob, encrypted_secret))
        session, out = self.path("session.ctx"), self.path("secret.out")
        if ek == "ecc":
            # swtpm's ECC P-384 EK (a high-range template) has userWithAuth: an empty password will do
            self.run(
                "tpm2_activatecredential",
                "-c",
                str(ak.ctx),
                "-C",
                EK_HANDLES[ek],
                "-i",
                str(blob),
                "-o",
                str(out),
            )
            return out.read_bytes()
        # the RSA EK (low-range template) admits only PolicySecret(endorsement)
        script = (
            f"tpm2_startauthsession --policy-session -S {session} && "
            f"tpm2_policysecret -S {session} -c e >/dev/null && "
            f"tpm2_activatecredential -c {ak.ctx} -C {EK_HANDLES[ek]} -i {blob} -o {out} -P session:{session}; "
            f"rc=$?; tpm2_flushcontext {session}; exit $rc"
        )
        self.run("sh", "-c", script)
        return out.read_bytes()


# --- tpm2-tools file formats --------------------------------------------------------------------------


def parse_tools_pcrs(raw: bytes) -> dict[str, dict[int, bytes]]:
    """tpm2-tools' serialized PCR file (``tpm2_quote -o``, default format): host-order (little-endian)
    C structs: TPML_PCR_SELECTION {u32 count; 16 x {u16 hash; u8 sizeofSelect; u8 select[4]; pad}},
    then u32 n and n x TPML_DIGEST {u32 count; 8 x {u16 size; u8 buffer[64]}}, values in selection order."""
    banks = {0x0004: "sha1", 0x000B: "sha256", 0x000C: "sha384", 0x000D: "sha512"}
    count = struct.unpack_from("<I", raw, 0)[0]
    selection: list[tuple[str, list[int]]] = []
    for i in range(count):
        hash_alg, size = struct.unpack_from("<HB", raw, 4 + 8 * i)
        bitmap = raw[4 + 8 * i + 3 : 4 + 8 * i + 3 + size]
        selection.append((banks[hash_alg], [j for j in range(size * 8) if bitmap[j // 8] >> (j % 8) & 1]))
    off = 4 + 16 * 8
    lists = struct.unpack_from("<I", raw, off)[0]
    off += 4
    digests: list[bytes] = []
    for _ in range(lists):
        n = struct.unpack_from("<I", raw, off)[0]
        for k in range(n):
            size = struct.unpack_from("<H", raw, off + 4 + 66 * k)[0]
            digests.append(raw[off + 6 + 66 * k : off + 6 + 66 * k + size])
        off += 4 + 8 * 66
    assert off == len(raw), (off, len(raw))
    out: dict[str, dict[int, bytes]] = {}
    it = iter(digests)
    for bank, pcrs in selection:
        out[bank] = {i: next(it) for i in pcrs}
    return out


def tools_credential_file(credential_blob: bytes, encrypted_secret: bytes) -> bytes:
    """tpm2-tools' credential file: magic 0xBADCC0DE, version 1, TPM2B_ID_OBJECT, TPM2B_ENCRYPTED_SECRET."""
    return struct.pack(">II", 0xBADCC0DE, 1) + credential_blob + encrypted_secret


# --- a synthetic TCG PC Client crypto-agile event log -----------------------------------------------------

_ALG = {"sha1": (0x0004, 20), "sha256": (0x000B, 32), "sha384": (0x000C, 48), "sha512": (0x000D, 64)}


def spec_id_event(banks: list[str]) -> bytes:
    """The first record: a TCG_PCClientPCREvent (SHA-1 format) carrying "Spec ID Event03"."""
    body = b"Spec ID Event03\x00" + struct.pack("<IBBBBI", 0, 0, 2, 0, 2, len(banks))
    body += b"".join(struct.pack("<HH", *_ALG[b]) for b in banks) + b"\x00"
    return struct.pack("<II", 0, 3) + bytes(20) + struct.pack("<I", len(body)) + body


def event2(pcr: int, event_type: int, digests: dict[str, bytes], data: bytes) -> bytes:
    """One TCG_PCR_EVENT2 with the given per-bank digests (in the given order)."""
    out = struct.pack("<III", pcr, event_type, len(digests))
    for bank, d in digests.items():
        out += struct.pack("<H", _ALG[bank][0]) + d
    return out + struct.pack("<I", len(data)) + data


def build_event_log(banks: list[str], events: list[tuple[int, int, dict[str, bytes], bytes]]) -> bytes:
    return spec_id_event(banks) + b"".join(event2(*e) for e in events)


def tools_pcrs_file(pcrs: dict[str, dict[int, bytes]]) -> bytes:
    """The inverse of :func:`parse_tools_pcrs`: what ``tpm2_checkquote -f`` reads (banks in the given
    order, PCRs ascending)."""
    algs = {"sha1": 0x0004, "sha256": 0x000B, "sha384": 0x000C, "sha512": 0x000D}
    sel = struct.pack("<I", len(pcrs))
    values: list[bytes] = []
    for bank, vals in pcrs.items():
        bitmap = bytearray(4)
        for i in sorted(vals):
            bitmap[i // 8] |= 1 << (i % 8)
            values.append(vals[i])
        sel += struct.pack("<HB", algs[bank], 3) + bytes(bitmap) + b"\x00"
    sel += bytes(8 * (16 - len(pcrs)))
    lists = [values[i : i + 8] for i in range(0, len(values), 8)]
    out = sel + struct.pack("<I", len(lists))
    for chunk in lists:
        out += struct.pack("<I", len(chunk))
        out += b"".join(struct.pack("<H", len(v)) + v.ljust(64, b"\x00") for v in chunk)
        out += bytes(66 * (8 - len(chunk)))
    return out


@dataclass(frozen=True)
class SyntheticBoot:
    """PCRs 7 and 8 of the shared swtpm extended once with these events, the matching log, a quote."""

    banks: list[str]
    events: list[tuple[int, int, dict[str, bytes], bytes]]
    log: bytes
    ak: Ak
    quote: Quote
    nonce: bytes


def uefi_variable(
    name: str, data: bytes, guid: bytes = bytes.fromhex("61dfe48bca93d211aa0d00e098032b8c")
) -> bytes:
    """A UEFI_VARIABLE_DATA (EFI global variable GUID by default)."""
    return guid + struct.pack("<QQ", len(name), len(data)) + name.encode("utf-16-le") + data


def synthetic_event(
    banks: list[str], pcr: int, typ: int, data: bytes, measured: bytes | None = None
) -> tuple[int, int, dict[str, bytes], bytes]:
    m = data if measured is None else measured
    return pcr, typ, {b: hashlib.new(b, m).digest() for b in banks}, data
