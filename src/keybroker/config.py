"""Service configuration: defaults < TOML file < ``KEYBROKER_*`` environment < command-line flags."""

from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from keybroker.auth.config import OidcSettings
from keybroker.errors import InvalidInput
from keybroker.keystores.config import KeystoreSettings
from keybroker.seal.config import SealSettings

DEFAULT_PORT = 9443


class TrustedAttestationService(BaseModel):
    """A remote attestation service whose EAR tokens this broker accepts (passport mode on /kbs/v1,
    bearer tokens on /kbs/v0), beside the tokens of its own in-process service."""

    model_config = ConfigDict(extra="forbid")

    #: The ``iss`` of its tokens ("keybroker" for another keybroker).
    issuer: str = Field(default="keybroker", min_length=1, max_length=256)
    #: Its JWKS (``GET /.well-known/jwks.json``) saved to a file: EC P-256/P-384 public keys.
    jwks_file: Path


class AttestationSettings(BaseModel):
    """Where ``/kbs/v1`` background checks verify evidence: in-process (default) or at a remote
    attestation service (its ``/attestation/v1``; its JWKS named in ``trust.attestation_services``)."""

    model_config = ConfigDict(extra="forbid")

    #: e.g. "https://attester.example:9443". None: verify in-process.
    remote_url: str | None = None
    #: The CA that signed the remote service's TLS certificate (None: the system's CAs).
    remote_ca_file: Path | None = None
    remote_timeout_seconds: float = Field(default=10.0, gt=0, le=120)

    @field_validator("remote_url")
    @classmethod
    def _check_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith("https://"):
            raise ValueError("must be an https:// URL")
        return value


class TrustSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    #: Extra root CAs for evidence (the dev TEE simulator). Empty: only Intel's pinned root.
    dev_roots: list[Path] = Field(default_factory=list)
    #: Remote attestation services whose tokens are trusted. Empty: only this service's own.
    attestation_services: list[TrustedAttestationService] = Field(default_factory=list)


class TpmSettings(BaseModel):
    """Which TPM attestation keys are trusted (``docs/tpm.md``)."""

    model_config = ConfigDict(extra="forbid")

    #: Per vendor (e.g. "gce"), files (PEM, or one DER certificate) of the CAs an AK certificate
    #: may chain to; self-signed certificates are the trust anchors, the others intermediates.
    #: Empty: no AK certificate is trusted.
    ak_roots: dict[str, list[Path]] = Field(default_factory=dict)
    #: Per TPM manufacturer, files (PEM or DER) of the CAs an EK certificate must chain to for
    #: its TPM's AKs to be enrolled. Empty: no enrolment.
    ek_roots: dict[str, list[Path]] = Field(default_factory=dict)
    #: Dev mode only (--dev; ignored otherwise): EK roots such as swtpm's local CA. AKs enrolled
    #: through them are simulated evidence (sim=true), refused by a server not in dev mode.
    dev_ek_roots: list[Path] = Field(default_factory=list)
    #: Seconds the TPM has to return an enrolment's credential.
    enrolment_ttl_seconds: int = Field(default=300, ge=10, le=3600)

    @field_validator("ak_roots", "ek_roots")
    @classmethod
    def _check_vendors(cls, value: dict[str, list[Path]]) -> dict[str, list[Path]]:
        for vendor, paths in value.items():
            if not re.fullmatch(r"[A-Za-z0-9_.\-]{1,64}", vendor):
                raise ValueError(f"vendor name {vendor!r} must be 1-64 of A-Z a-z 0-9 _ . -")
            if not paths:
                raise ValueError(f"vendor {vendor!r} lists no PEM file")
        return value


class LimitsSettings(BaseModel):
    """Limits on what unauthenticated callers can make the service do or keep (429 past them)."""

    model_config = ConfigDict(extra="forbid")

    #: Failed unseal attempts (malformed, repeated or wrong shares) and resets per minute from one
    #: client address (an IPv6 /64); also the burst. Past it, that address is refused (429).
    unseal_failures_per_client_per_minute: int = Field(default=10, ge=1, le=10_000)
    #: The same from all addresses together.
    unseal_failures_per_minute: int = Field(default=60, ge=1, le=100_000)
    #: Outstanding (unexpired, unused) nonces, for /kbs/v1 transfer challenges and for
    #: /attestation/v1/nonce each. Past it, new challenges get 429 (issued ones stay usable).
    outstanding_nonces: int = Field(default=10_000, ge=1, le=10_000_000)
    #: Outstanding (unexpired, not yet attested) /kbs/v0 sessions.
    outstanding_sessions: int = Field(default=10_000, ge=1, le=10_000_000)


class AuditSettings(BaseModel):
    """Checkpoints of the audit chain head (:mod:`keybroker.audit.checkpoint`), and the appraisal
    inputs kept with the audit records of recent attempts (:mod:`keybroker.audit.inputs`)."""

    model_config = ConfigDict(extra="forbid")

    #: Seconds between checkpoints while records are appended (also one at start and at shutdown).
    checkpoint_interval_seconds: float = Field(default=1.0, gt=0, le=60)
    #: Also log each checkpoint (logger ``keybroker.audit.checkpoint``), e.g. for syslog/journald.
    checkpoint_log: bool = False
    #: The appraisal input documents (verified claims, TCB status; no evidence, nonce or key) of
    #: this many of the newest attempts are kept, to test a policy on them in the console. 0: none.
    appraisal_inputs: int = Field(default=200, ge=0, le=100_000)


class CollateralSettings(BaseModel):
    """Where ``keybroker collateral fetch`` asks when no ``--from`` is given, and where the console's
    *Refresh now* asks."""

    model_config = ConfigDict(extra="forbid")

    #: AMD's Key Distribution Service, or a KDS-compatible mirror (another keybroker) for
    #: ``collateral fetch --snp``. https:// (http:// on a loopback address only).
    kds_url: str = Field(default="https://kdsintf.amd.com", min_length=1, max_length=2048)
    #: Intel's PCS (https://api.trustedservices.intel.com) or a PCCS (another keybroker too) for
    #: ``collateral fetch`` of DCAP collateral. None: none configured (``--from`` is needed).
    pcs_url: str | None = Field(default=None, min_length=1, max_length=2048)
    #: The CA bundle that verifies those sources' TLS certificates when they are used from the
    #: configuration (None: the system's CAs).
    ca_file: Path | None = None

    @field_validator("kds_url", "pcs_url")
    @classmethod
    def _check_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("https://", "http://")):
            raise ValueError("must be an https:// URL")
        return value


class SnpSettings(BaseModel):
    """AMD SEV-SNP verification (docs/snp.md)."""

    model_config = ConfigDict(extra="forbid")

    #: Every SEV-SNP report (az-snp-vtpm too) needs a current CRL of its chain's ARK, for its side
    #: (ASK or ASVK), held by the KDS cache (``collateral fetch --snp``). False (unsafe: a revoked
    #: ASK/ASVK then passes when no CRL is cached) is logged as a warning at every start.
    require_crl: bool = True


class ConsoleSettings(BaseModel):
    """The web console at ``/ui``."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    #: A session ends after this long without a request, seconds.
    session_idle_seconds: int = Field(default=900, ge=60, le=86_400)
    #: ... and this long after sign-in in any case, seconds.
    session_max_seconds: int = Field(default=8 * 3600, ge=300, le=7 * 86_400)


class Settings(BaseModel):
    """Everything ``keybroker serve`` and the local operator commands need."""

    model_config = ConfigDict(extra="forbid")

    data_dir: Path = Path("./data")
    listen: str = f"127.0.0.1:{DEFAULT_PORT}"
    #: Names (DNS or IP) this replica's HTTPS certificate carries besides the listen address and
    #: loopback: what clients dial, the load balancer's name and the host's own (docs/ha.md).
    tls_names: list[str] = Field(default_factory=list)
    #: SQLAlchemy URL. None: SQLite (WAL) at ``<data_dir>/keybroker.db``.
    database: str | None = None
    insecure_http: bool = False
    #: Processes serving the listening socket (``serve --workers``): PostgreSQL only, each unsealed
    #: on its own (an auto-unseal seal, or --dev).
    workers: int = Field(default=1, ge=1, le=64)
    #: Development mode: auto-unseal from a key file in the data dir, dev PKI for the simulator.
    dev: bool = False
    log_format: Literal["text", "json"] = "text"
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    #: Lifetime of /kbs/v1 and /kbs/v0 nonces and sessions, seconds.
    nonce_ttl_seconds: int = Field(default=300, ge=10, le=3600)
    trust: TrustSettings = Field(default_factory=TrustSettings)
    attestation: AttestationSettings = Field(default_factory=AttestationSettings)
    keystore: KeystoreSettings = Field(default_factory=KeystoreSettings)
    seal: SealSettings = Field(default_factory=SealSettings)
    limits: LimitsSettings = Field(default_factory=LimitsSettings)
    audit: AuditSettings = Field(default_factory=AuditSettings)
    collateral: CollateralSettings = Field(default_factory=CollateralSettings)
    snp: SnpSettings = Field(default_factory=SnpSettings)
    #: None: no OpenID provider (the console's dev login under --dev only).
    oidc: OidcSettings | None = None
    console: ConsoleSettings = Field(default_factory=ConsoleSettings)
    tpm: TpmSettings = Field(default_factory=TpmSettings)

    @field_validator("listen")
    @classmethod
    def _check_listen(cls, value: str) -> str:
        parse_listen(value)
        return value

    @property
    def database_url(self) -> str:
        if self.database:
            return self.database
        return f"sqlite:///{(self.data_dir / 'keybroker.db').resolve()}"

    @property
    def host(self) -> str:
        return parse_listen(self.listen)[0]

    @property
    def port(self) -> int:
        return parse_listen(self.listen)[1]


def parse_listen(value: str) -> tuple[str, int]:
    """Split ``HOST:PORT`` (``[::1]:9443`` for IPv6)."""
    host, sep, port_text = value.rpartition(":")
    if not sep or not host or not port_text.isdigit():
        raise ValueError(f"listen address {value!r} is not HOST:PORT")
    port = int(port_text)
    if not 0 < port < 65536:
        raise ValueError(f"port {port} is out of range 1-65535")
    return host.strip("[]"), port


_ENV_PREFIX = "KEYBROKER_"
_ENV_KEYS = {
    "DATA_DIR": "data_dir",
    "LISTEN": "listen",
    "DATABASE": "database",
    "INSECURE_HTTP": "insecure_http",
    "WORKERS": "workers",
    "DEV": "dev",
    "LOG_FORMAT": "log_format",
    "LOG_LEVEL": "log_level",
    "NONCE_TTL_SECONDS": "nonce_ttl_seconds",
}
#: Settings of a section, ``KEYBROKER_<SECTION>_<NAME>``.
_ENV_SECTION_KEYS = {
    "LIMITS_UNSEAL_FAILURES_PER_CLIENT_PER_MINUTE": ("limits", "unseal_failures_per_client_per_minute"),
    "LIMITS_UNSEAL_FAILURES_PER_MINUTE": ("limits", "unseal_failures_per_minute"),
    "LIMITS_OUTSTANDING_NONCES": ("limits", "outstanding_nonces"),
    "LIMITS_OUTSTANDING_SESSIONS": ("limits", "outstanding_sessions"),
    "AUDIT_CHECKPOINT_INTERVAL_SECONDS": ("audit", "checkpoint_interval_seconds"),
    "AUDIT_CHECKPOINT_LOG": ("audit", "checkpoint_log"),
    "AUDIT_APPRAISAL_INPUTS": ("audit", "appraisal_inputs"),
    "COLLATERAL_KDS_URL": ("collateral", "kds_url"),
    "COLLATERAL_PCS_URL": ("collateral", "pcs_url"),
}


def load_settings(
    config_file: Path | None = None,
    environ: dict[str, str] | None = None,
    **overrides: Any,
) -> Settings:
    """Merge the sources in order; ``overrides`` with value None are ignored."""
    env = os.environ if environ is None else environ
    merged: dict[str, Any] = {}
    if config_file is None and env.get(_ENV_PREFIX + "CONFIG"):
        config_file = Path(env[_ENV_PREFIX + "CONFIG"])
    if config_file is not None:
        try:
            merged.update(tomllib.loads(config_file.read_text()))
        except FileNotFoundError as exc:
            raise InvalidInput(f"config file {config_file} does not exist", field="config") from exc
        except tomllib.TOMLDecodeError as exc:
            raise InvalidInput(f"config file {config_file} is not valid TOML: {exc}", field="config") from exc
    for suffix, key in _ENV_KEYS.items():
        if (_ENV_PREFIX + suffix) in env:
            merged[key] = env[_ENV_PREFIX + suffix]
    for suffix, (section, key) in _ENV_SECTION_KEYS.items():
        if (_ENV_PREFIX + suffix) in env:
            merged.setdefault(section, {})[key] = env[_ENV_PREFIX + suffix]
    if _ENV_PREFIX + "TLS_NAMES" in env:
        merged["tls_names"] = [n.strip() for n in env[_ENV_PREFIX + "TLS_NAMES"].split(",") if n.strip()]
    if _ENV_PREFIX + "TRUST_DEV_ROOTS" in env:
        roots = [p for p in env[_ENV_PREFIX + "TRUST_DEV_ROOTS"].split(os.pathsep) if p]
        merged.setdefault("trust", {})["dev_roots"] = roots
    merged.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return Settings.model_validate(merged)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise InvalidInput(f"configuration {where}: {first['msg']}", field=where) from exc
