"""TPM 2.0 evidence on the workload side, through the ``tpm2-tools`` commands.

- :class:`TpmTools`: runs tpm2-tools against a TCTI (None: the tools' default, ``/dev/tpmrm0``
  through the kernel's resource manager; ``swtpm:host=...,port=...`` for a software TPM, after
  which transient objects and sessions are flushed since no resource manager does).
- :func:`enrol`: the EK (a persistent handle, else made from the standard template), its
  certificate (TCG NV index, or a file), an AK made under the EK and made persistent, then the
  broker's enrolment: ``TPM2_ActivateCredential`` recovers the secret of the broker's credential.
- :class:`TpmProvider` (``--tee tpm``): a quote over the PCRs with the binding as extraData, the
  PCR values, the AK, optionally its certificates and the event log, as keybroker's TPM evidence
  document (``keybroker.wire.tpm``).
- :class:`AzureVtpmProvider` (``--tee az-snp-vtpm`` / ``az-tdx-vtpm``): the HCL report from the vTPM
  NV index, a quote by the vTPM AK (HCLAkPub) over the 24 SHA-256 PCRs, and the hardware
  endorsement from Azure's instance metadata service (the VCEK; the TD quote), as Trustee's JSON.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import shutil
import struct
import subprocess
import tempfile
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal

from keybroker.client.errors import EvidenceUnavailable
from keybroker.client.evidence import Evidence
from keybroker.errors import InvalidInput
from keybroker.wire.tpm import parse_tools_pcrs, tpm_evidence

__all__ = [
    "AZURE_AK_HANDLE",
    "DEFAULT_AK_HANDLE",
    "DEFAULT_EK_HANDLE",
    "DEFAULT_PCRS",
    "EVENT_LOG",
    "AzureVtpmProvider",
    "TpmProvider",
    "TpmTools",
    "enrol",
]

log = logging.getLogger("keybroker.client")

#: TCG EK Credential Profile: the RSA-2048 EK's persistent handle and its certificate's NV index.
DEFAULT_EK_HANDLE: Final = "0x81010001"
EK_CERT_NV: Final = "0x01c00002"
#: Where this client keeps its AK (owner-hierarchy persistent range).
DEFAULT_AK_HANDLE: Final = "0x81010002"
#: Azure's vTPM: the HCL report's NV index, the user-data index, the AK (HCLAkPub).
AZURE_HCL_NV: Final = "0x01400001"
AZURE_AK_HANDLE: Final = "0x81000003"
DEFAULT_PCRS: Final = "sha256:0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23"
EVENT_LOG: Final = Path("/sys/kernel/security/tpm0/binary_bios_measurements")
#: The instance metadata service of Azure VMs (link-local): the VCEK chain, the TD quote.
AZURE_IMDS: Final = "http://169.254.169.254"
_TOOLS: Final = ("tpm2_readpublic", "tpm2_createak", "tpm2_quote", "tpm2_activatecredential")


class TpmTools:
    """tpm2-tools against one TPM; temporary files in a private directory."""

    def __init__(self, tcti: str | None = None, *, work: Path | None = None) -> None:
        self.tcti = tcti
        missing = [t for t in _TOOLS if shutil.which(t) is None]
        if missing:
            raise EvidenceUnavailable(
                f"tpm2-tools is not installed (missing {', '.join(missing)}): install the tpm2-tools package"
            )
        self._work = work or Path(tempfile.mkdtemp(prefix="keybroker-tpm-"))
        self._n = 0
        #: No resource manager between us and the TPM (swtpm, mssim): flush what each command leaves.
        effective = tcti or os.environ.get("TPM2TOOLS_TCTI") or ""
        self._flush = effective.split(":", 1)[0] in ("swtpm", "mssim")

    @staticmethod
    def _exe(tool: str) -> str:
        if not tool.startswith("tpm2_"):
            raise ValueError(f"{tool} is not a tpm2-tools command")
        path = shutil.which(tool)
        if path is None:
            raise EvidenceUnavailable(f"{tool} is not installed (the tpm2-tools package)")
        return path

    @property
    def source(self) -> str:
        tcti = self.tcti or os.environ.get("TPM2TOOLS_TCTI")
        return f"TPM ({tcti or 'default TCTI, /dev/tpmrm0'})"

    def path(self, stem: str) -> Path:
        self._n += 1
        return self._work / f"{self._n:03d}-{stem}"

    def run(self, *args: str, flush: bool = True) -> bytes:
        """One command; ``flush`` false keeps what it loaded (a policy session for the next command)."""
        env = dict(os.environ)
        if self.tcti is not None:
            env["TPM2TOOLS_TCTI"] = self.tcti
        try:
            # the commands are tpm2-tools by absolute path; the arguments are this module's own values
            done = subprocess.run(  # noqa: S603
                [self._exe(args[0]), *args[1:]], env=env, cwd=self._work, capture_output=True, timeout=60
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise EvidenceUnavailable(f"{args[0]}: {exc}") from None
        finally:
            if self._flush and flush:
                for kind in ("-t", "-s"):
                    subprocess.run(  # noqa: S603
                        [self._exe("tpm2_flushcontext"), kind], env=env, capture_output=True, timeout=30
                    )
        if done.returncode != 0:
            err = done.stderr.decode(errors="replace").strip().splitlines()
            raise EvidenceUnavailable(f"{args[0]} failed: {err[-1] if err else f'exit {done.returncode}'}")
        return done.stdout

    # --- reading -------------------------------------------------------------------------------

    def has_handle(self, handle: str) -> bool:
        try:
            self.run("tpm2_readpublic", "-c", handle)
        except EvidenceUnavailable:
            return False
        return True

    def read_public(self, handle: str) -> bytes:
        """The object's TPM2B_PUBLIC."""
        out = self.path("public")
        self.run("tpm2_readpublic", "-c", handle, "-f", "tss", "-o", str(out))
        return out.read_bytes()

    def nv_read(self, index: str) -> bytes:
        out = self.path("nv")
        self.run("tpm2_nvread", index, "-C", "o", "-o", str(out))
        return out.read_bytes()

    def ek(self, handle: str = DEFAULT_EK_HANDLE) -> str:
        """The RSA EK's handle: the persistent one, else a context made from the standard template."""
        if self.has_handle(handle):
            return handle
        ctx = self._work / "ek.ctx"
        if not ctx.exists():
            self.run("tpm2_createek", "-c", str(ctx), "-G", "rsa")
        return str(ctx)

    def ek_certificate(self) -> bytes:
        """The RSA EK certificate the manufacturer stored at its TCG NV index (DER)."""
        raw = self.nv_read(EK_CERT_NV)
        if len(raw) < 4 or raw[0] != 0x30:
            raise EvidenceUnavailable(f"NV index {EK_CERT_NV} does not hold a DER certificate")
        # the index may be larger than the certificate: keep the DER SEQUENCE only
        length = raw[1]
        if length & 0x80:
            n = length & 0x7F
            length = int.from_bytes(raw[2 : 2 + n], "big") + 2 + n
        else:
            length += 2
        return raw[:length]

    # --- keys ----------------------------------------------------------------------------------

    def ensure_ak(self, ek: str, handle: str = DEFAULT_AK_HANDLE) -> bytes:
        """The AK at ``handle`` (an RSA-2048 RSASSA-SHA256 restricted signing key made under the EK and
        made persistent, if there is none yet): its TPM2B_PUBLIC."""
        if not self.has_handle(handle):
            ctx, pub = self.path("ak.ctx"), self.path("ak.pub")
            self.run(
                "tpm2_createak", "-C", ek, "-c", str(ctx), "-G", "rsa", "-g", "sha256", "-s", "rsassa",
                "-u", str(pub), "-f", "tss",
            )  # fmt: skip
            self.run("tpm2_evictcontrol", "-C", "o", "-c", str(ctx), handle)
        return self.read_public(handle)

    def activate_credential(self, ak: str, ek: str, credential_blob: bytes, encrypted_secret: bytes) -> bytes:
        """TPM2_ActivateCredential with the EK (its PolicySecret(endorsement) session) and the AK."""
        blob = self.path("cred.blob")
        blob.write_bytes(struct.pack(">II", 0xBADCC0DE, 1) + credential_blob + encrypted_secret)
        session, out = self.path("session.ctx"), self.path("secret")
        self.run("tpm2_startauthsession", "--policy-session", "-S", str(session), flush=False)
        try:
            self.run("tpm2_policysecret", "-S", str(session), "-c", "e", flush=False)
            self.run(
                "tpm2_activatecredential", "-c", ak, "-C", ek, "-i", str(blob), "-o", str(out),
                "-P", f"session:{session}", flush=False,
            )  # fmt: skip
        finally:
            self.run("tpm2_flushcontext", str(session))
        return out.read_bytes()

    def quote(
        self, ak: str, extra_data: bytes, selection: str
    ) -> tuple[bytes, bytes, dict[str, dict[int, bytes]]]:
        """(TPMS_ATTEST, TPMT_SIGNATURE, PCR values) of a quote over ``selection`` with ``extra_data``."""
        msg, sig, pcrs = self.path("q.msg"), self.path("q.sig"), self.path("q.pcrs")
        args = ["tpm2_quote", "-c", ak, "-l", selection, "-m", str(msg), "-s", str(sig), "-o", str(pcrs)]
        args += ["-g", "sha256"]
        if extra_data:
            args += ["-q", extra_data.hex()]
        self.run(*args)
        try:
            values = parse_tools_pcrs(pcrs.read_bytes())
        except ValueError as exc:
            raise EvidenceUnavailable(f"tpm2_quote wrote a PCR file this client cannot read: {exc}") from None
        return msg.read_bytes(), sig.read_bytes(), values


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def enrol(
    tools: TpmTools,
    post: Callable[[str, dict[str, Any]], dict[str, Any]],
    *,
    ek_handle: str = DEFAULT_EK_HANDLE,
    ak_handle: str = DEFAULT_AK_HANDLE,
    ek_certificate: bytes | None = None,
    label: str | None = None,
) -> dict[str, Any]:
    """Enrol this TPM's AK with the broker (``post(path, body)`` returns the broker's JSON): the AK's
    record, ``pending`` until an administrator approves it unless the caller may approve AKs."""
    ek = tools.ek(ek_handle)
    ek_public = tools.read_public(ek)
    cert = ek_certificate if ek_certificate is not None else tools.ek_certificate()
    ak_public = tools.ensure_ak(ek, ak_handle)
    body: dict[str, Any] = {
        "ek_public": _b64(ek_public),
        "ek_certificate": _b64(cert),
        "ak_public": _b64(ak_public),
    }
    if label is not None:
        body["label"] = label
    challenge = post("/kbs/v1/tpm/enrolments", body)
    try:
        blob = base64.b64decode(challenge["credential_blob"], validate=True)
        encrypted = base64.b64decode(challenge["encrypted_secret"], validate=True)
        enrolment = str(challenge["id"])
    except (KeyError, TypeError, ValueError):
        raise InvalidInput("the broker's enrolment answer is malformed", field="enrolment") from None
    secret = tools.activate_credential(ak_handle, ek, blob, encrypted)
    return post(f"/kbs/v1/tpm/enrolments/{enrolment}/activation", {"secret": _b64(secret)})


def _extra_data_in(message: bytes, extra_data: bytes) -> bool:
    """The TPMS_ATTEST carries ``extra_data`` as its extraData (magic, type, qualifiedSigner, extraData)."""
    if len(message) < 8:
        return False
    signer = int.from_bytes(message[6:8], "big")
    at = 8 + signer
    size = int.from_bytes(message[at : at + 2], "big")
    return size == len(extra_data) and message[at + 2 : at + 2 + size] == extra_data


@dataclass
class TpmProvider:
    """``--tee tpm``: quotes by the enrolled (or certified) AK at ``ak_handle``."""

    tools: TpmTools
    ak_handle: str = DEFAULT_AK_HANDLE
    selection: str = DEFAULT_PCRS
    #: The firmware event log (None: none sent).
    event_log: Path | None = None
    #: The AK certificate and intermediates (DER), for a certified AK.
    ak_certificates: Sequence[bytes] = ()
    tee: Literal["tpm"] = "tpm"

    @property
    def source(self) -> str:
        return self.tools.source

    def evidence(self, extra_data: bytes) -> Evidence:
        if not 1 <= len(extra_data) <= 64:
            raise InvalidInput(
                f"a TPM quote's extraData is 1 to 64 bytes, got {len(extra_data)}", field="extra_data"
            )
        ak_public = self.tools.read_public(self.ak_handle)
        message, signature, pcrs = self.tools.quote(self.ak_handle, extra_data, self.selection)
        if not _extra_data_in(message, extra_data):
            raise EvidenceUnavailable(f"{self.source} returned a quote without the requested extraData")
        log_bytes = None
        if self.event_log is not None:
            try:
                log_bytes = self.event_log.read_bytes()
            except OSError as exc:
                raise EvidenceUnavailable(f"cannot read the event log {self.event_log}: {exc}") from None
        doc = tpm_evidence(
            quote=message,
            signature=signature,
            pcrs=pcrs,
            ak_public=ak_public,
            ak_certificates=self.ak_certificates,
            event_log=log_bytes,
        )
        return Evidence("tpm", doc, self.source)


def _imds_get(path: str, *, timeout: float = 10.0) -> bytes:
    req = urllib.request.Request(AZURE_IMDS + path, headers={"Metadata": "true"})  # noqa: S310 - fixed http URL
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310
            data: bytes = resp.read(1024 * 1024)
            return data
    except OSError as exc:
        raise EvidenceUnavailable(f"Azure instance metadata {path}: {exc}") from None


def _imds_td_quote(tdreport: bytes, *, timeout: float = 10.0) -> bytes:
    body = json.dumps({"report": base64.urlsafe_b64encode(tdreport).decode().rstrip("=")}).encode()
    req = urllib.request.Request(  # noqa: S310 - fixed http URL
        AZURE_IMDS + "/acc/tdquote", data=body, headers={"Content-Type": "application/json"}, method="POST"
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310
            answer = json.loads(resp.read(1024 * 1024))
        quote = answer["quote"]
        return base64.urlsafe_b64decode(quote + "=" * (-len(quote) % 4))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise EvidenceUnavailable(f"Azure instance metadata /acc/tdquote: {exc}") from None


def _vcek_from_imds() -> bytes:
    """The VCEK (DER) from Azure's THIM endpoint (its PEM ``vcekCert``)."""
    try:
        doc = json.loads(_imds_get("/metadata/THIM/amd/certification"))
        pem = doc["vcekCert"].encode()
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise EvidenceUnavailable(f"Azure THIM answer has no vcekCert: {exc}") from None
    lines = [ln for ln in pem.decode().splitlines() if ln and not ln.startswith("-----")]
    try:
        return base64.b64decode("".join(lines), validate=True)
    except ValueError:
        raise EvidenceUnavailable("Azure THIM vcekCert is not PEM") from None


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode()


@dataclass
class AzureVtpmProvider:
    """``--tee az-snp-vtpm`` / ``az-tdx-vtpm``: Trustee's evidence (version 1) from the Azure vTPM.

    ``vcek``: the VCEK (DER) when not fetched from the instance metadata service; ``td_quote``:
    makes the TD quote of a TDREPORT (default: the metadata service's ``/acc/tdquote``)."""

    tools: TpmTools
    tee: Literal["az-snp-vtpm", "az-tdx-vtpm"]
    ak_handle: str = AZURE_AK_HANDLE
    vcek: bytes | None = None
    td_quote: Callable[[bytes], bytes] | None = None

    @property
    def source(self) -> str:
        return f"Azure vTPM, {self.tools.source}"

    def evidence(self, extra_data: bytes) -> Evidence:
        if not 1 <= len(extra_data) <= 64:
            raise InvalidInput(
                f"a TPM quote's extraData is 1 to 64 bytes, got {len(extra_data)}", field="extra_data"
            )
        hcl = self.tools.nv_read(AZURE_HCL_NV)
        message, signature, pcrs = self.tools.quote(self.ak_handle, extra_data, DEFAULT_PCRS)
        if not _extra_data_in(message, extra_data):
            raise EvidenceUnavailable(f"{self.source} returned a quote without the requested extraData")
        sig = _raw_rsa_signature(signature)
        tpm_quote = {
            "signature": sig.hex(),
            "message": message.hex(),
            "pcrs": [pcrs["sha256"][i].hex() for i in range(24)],
        }
        doc: dict[str, Any] = {"version": 1, "tpm_quote": tpm_quote, "hcl_report": _b64url(hcl)}
        if self.tee == "az-snp-vtpm":
            doc["vcek"] = _b64url(self.vcek if self.vcek is not None else _vcek_from_imds())
        else:
            tdreport = hcl[0x20 : 0x20 + 1024]
            doc["td_quote"] = _b64url((self.td_quote or _imds_td_quote)(tdreport))
        return Evidence(self.tee, json.dumps(doc).encode(), self.source)


def _raw_rsa_signature(tpmt_signature: bytes) -> bytes:
    """The bare RSASSA signature of a TPMT_SIGNATURE (Trustee's Azure form carries only that)."""
    if len(tpmt_signature) < 6 or tpmt_signature[0:2] != b"\x00\x14" or tpmt_signature[2:4] != b"\x00\x0b":
        raise EvidenceUnavailable("the vTPM AK did not sign with RSASSA-SHA256")
    size = int.from_bytes(tpmt_signature[4:6], "big")
    if len(tpmt_signature) != 6 + size:
        raise EvidenceUnavailable("malformed TPMT_SIGNATURE from tpm2_quote")
    return tpmt_signature[6:]
