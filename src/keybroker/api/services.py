"""Everything a request handler may use, built once per process from Settings."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

from keybroker import datadir
from keybroker.appraisal.registry import REGISTRY
from keybroker.attestation.ear import jwks_keys
from keybroker.attestation.keyring_store import KeyringStore
from keybroker.attestation.remote import RemoteAttestation
from keybroker.attestation.service import AttestationService, TrustedIssuer
from keybroker.audit import log as audit
from keybroker.audit.checkpoint import (
    CHECKPOINT_FILE,
    CHECKPOINT_KEY_FILE,
    CheckpointFile,
    CheckpointSigner,
    load_or_create_key,
)
from keybroker.audit.guard import ChainGuard, Checkpointer
from keybroker.audit.inputs import AppraisalInputs
from keybroker.auth.authn import Authenticator
from keybroker.auth.oidc import OidcProvider
from keybroker.auth.registry import TokenRegistry
from keybroker.auth.rolestore import RoleStore
from keybroker.collateral.kds_store import KdsStore, crl_source, endorsement_source
from keybroker.collateral.store import DbCollateralSource
from keybroker.collateral.trust import DEV_PKI_DIR as DEV_PKI_DIR  # where tests find the dev PKI
from keybroker.collateral.trust import dev_pki_dir, ek_roots, evidence_trust, snp_dev_pki_dir
from keybroker.config import Settings, TrustedAttestationService
from keybroker.errors import Conflict, InvalidInput, KeybrokerError
from keybroker.keys.release import ReleaseService
from keybroker.keys.service import KeyService
from keybroker.keys.serviceca import ServiceCA, ServiceCAs
from keybroker.keystores.base import KeyStore
from keybroker.keystores.factory import build_keystore
from keybroker.limits import FailureLimit, OutstandingCap
from keybroker.replica import Replica
from keybroker.resources.service import KbsV0Service
from keybroker.seal.adoption import IntegrityReview
from keybroker.seal.autounseal import configure_auto_unseal
from keybroker.seal.barrier import Barrier
from keybroker.seal.integrity import RowIntegrity
from keybroker.seal.unseal import UnsealService
from keybroker.store.db import Database
from keybroker.tee.dcap.endorsements import QuoteCollateral
from keybroker.tee.sim import DevPki
from keybroker.tee.sim.snp import CRL_RENEW_MARGIN, SnpDevPki
from keybroker.tee.tpm.trust import dry_run_trust
from keybroker.tee.verifier import Verifier
from keybroker.tpmaks.service import TpmAkService
from keybroker.tpmaks.store import DbAkRegistry

log = logging.getLogger("keybroker")

TOKEN_KEY_FILE = "token-signing-key.pem"  # noqa: S105 - a file name
DEV_UNSEAL_FILE = "dev-unseal.key"


def _trusted_issuer(index: int, conf: TrustedAttestationService) -> TrustedIssuer:
    """A remote attestation service from ``trust.attestation_services``: its JWKS file, loaded now."""
    field = f"trust.attestation_services[{index}].jwks_file"
    try:
        jwks = json.loads(conf.jwks_file.read_text())
        if not isinstance(jwks, dict):
            raise ValueError("not a JSON object")
        kids = jwks_keys(jwks)
    except (OSError, ValueError, KeybrokerError) as exc:
        why = exc.detail if isinstance(exc, KeybrokerError) else str(exc)
        raise InvalidInput(f"{field}: cannot load a JWKS from {conf.jwks_file}: {why}", field=field) from None
    log.info(
        "trusting attestation tokens of issuer %r signed by key(s) %s from %s",
        conf.issuer,
        ", ".join(sorted(kids)),
        conf.jwks_file,
    )
    return TrustedIssuer(conf.issuer, jwks, str(conf.jwks_file))


def _remote_attestation(settings: Settings) -> RemoteAttestation | None:
    """``attestation.remote_url``: /kbs/v1 background checks verified there (its tokens must be trusted)."""
    conf = settings.attestation
    if conf.remote_url is None:
        return None
    if not settings.trust.attestation_services:
        raise InvalidInput(
            "attestation.remote_url needs the remote service's JWKS in trust.attestation_services, "
            "to verify the tokens it returns",
            field="trust.attestation_services",
        )
    log.info("/kbs/v1 background checks verify evidence at %s", conf.remote_url)
    return RemoteAttestation(
        conf.remote_url, ca_file=conf.remote_ca_file, timeout=conf.remote_timeout_seconds
    )


def _dev_pki(directory: Path) -> DevPki:
    """The dev TEE simulator's PKI (created on first start; collateral refreshed when near expiry)."""
    pki = DevPki.load_or_create(directory)
    expiry = QuoteCollateral.from_json(pki.collateral_json("sgx")).tcb_info_next_update
    if expiry - datetime.now(UTC) < timedelta(days=7):
        pki.reissue_collateral()
    log.warning(
        "DEV MODE: evidence from the simulator's dev root %s is trusted (claims carry sim=true)",
        pki.root_pem_path,
    )
    return pki


def _snp_dev_pki(directory: Path) -> SnpDevPki:
    """The SEV-SNP simulator's dev PKI (an AMD-shaped ARK/ASK/ASVK; created on first start, its
    CRLs issued again when one is missing or does not cover the coming week; while the server runs,
    :func:`_snp_dev_crl_renewal` keeps them current)."""
    pki = SnpDevPki.load_or_create(directory)
    if pki.crls_expire_before(datetime.now(UTC) + CRL_RENEW_MARGIN):
        pki.reissue_crls()  # every SEV-SNP report needs a current CRL of its ARK (snp.require_crl)
    log.warning(
        "DEV MODE: SEV-SNP reports chaining to the simulator's dev ARK %s are trusted (claims carry sim=true)",
        directory / "ark.pem",
    )
    return pki


def _snp_dev_crl_renewal(directory: Path) -> Callable[[], None]:
    """What keeps the SEV-SNP dev PKI's CRLs (valid 30 days) current while the dev server runs: called
    before every lookup of them (``collateral.trust``), it re-issues both when they do not cover the
    coming week (``SnpDevPki.renew_crls``, keeping the revocations), so a dev server running for
    months keeps verifying simulated reports without a restart. Only the dev PKI this server owns is
    written; AMD's CRLs (the KDS cache) are never touched. A failure to write is logged: the stale CRL
    then stays, and reports are refused at ``crl`` saying so."""

    def renew() -> None:
        try:
            if SnpDevPki.renew_crls(directory):
                log.info("DEV MODE: re-issued the SEV-SNP dev PKI's CRLs in %s (valid 30 days)", directory)
        except (OSError, ValueError, KeyError) as exc:
            log.warning("DEV MODE: cannot re-issue the SEV-SNP dev PKI's CRLs in %s: %s", directory, exc)

    return renew


def _warn_key_certificates_under_tls_anchor(keys: KeyService, cas: ServiceCAs) -> None:
    """A data dir from before the two CAs were separated may hold key certificates that its TLS anchor
    signed: each lets whoever holds that key pass for the broker. Say so at every start until the
    anchor is replaced (docs/certificates.md)."""
    # only certificates stored before the issuing CA existed can have been signed by the TLS anchor
    created = cas.issuing.cert.not_valid_before_utc + timedelta(minutes=10)
    under_anchor = keys.certificates_issued_by(cas.tls.cert, created_before=created)
    if under_anchor:
        log.warning(
            "%d key certificate(s) issued before this version were signed by the TLS anchor %s, so the "
            "holders of those keys (%s) can pass for this broker to every client that trusts it: replace "
            "the TLS anchor as docs/certificates.md says, and certify those keys again",
            len(under_anchor),
            cas.tls.cert_path,
            ", ".join(sorted(under_anchor)[:10]) + (", ..." if len(under_anchor) > 10 else ""),
        )


def _checkpointer(settings: Settings, db: Database, barrier: Barrier) -> Checkpointer:
    """The audit chain's guard, attached to ``db`` before anything appends, and its checkpointer;
    both start from the newest checkpoint in the data dir."""
    signer = CheckpointSigner(load_or_create_key(settings.data_dir / CHECKPOINT_KEY_FILE))
    sink = CheckpointFile(settings.data_dir / CHECKPOINT_FILE)
    latest = sink.last(signer.public_key)
    guard = ChainGuard(barrier, latest)
    audit.attach_guard(db.engine, guard)
    conf = settings.audit
    return Checkpointer(
        db,
        guard,
        signer,
        sink,
        interval=conf.checkpoint_interval_seconds,
        emit_log=conf.checkpoint_log,
        latest=latest,
    )


@dataclass
class Services:
    settings: Settings
    db: Database
    barrier: Barrier
    keystore: KeyStore
    keys: KeyService
    #: Bearer tokens: issued, verified against their records, revoked.
    tokens: TokenRegistry
    #: Anchors the broker's own HTTPS (``ca/ca.pem``, what clients pin); signs nothing else.
    tls_ca: ServiceCA
    #: Signs key certificates (``ca/issuing-ca.pem``).
    issuing_ca: ServiceCA
    verifier: Verifier
    release: ReleaseService
    attestation: AttestationService
    kbs_v0: KbsV0Service
    unseal: UnsealService
    #: Authenticates the audit chain head before appends, checkpoints it (started with the app).
    checkpointer: Checkpointer
    #: What this replica shares with the others (CAs, token key) and its HTTPS certificate.
    replica: Replica
    #: Custom roles, and role names resolved to permissions.
    roles: RoleStore
    #: Bearer tokens (keybroker's and the OpenID provider's) to principals, roles resolved.
    authn: Authenticator
    #: The organisation's OpenID provider (``[oidc]``), or None.
    oidc: OidcProvider | None
    #: Attempts' audit records with their appraisal inputs (the newest kept).
    inputs: AppraisalInputs
    #: TPM attestation keys: enrolment through the EK, approval, revocation.
    tpm_aks: TpmAkService
    #: The verifier of policy dry runs (the console's *Test this policy*): this server's trust, but
    #: TPM AKs as enrolled without recording their clocks, else as given (``tee.tpm.trust.dry_run_trust``,
    #: as ``keybroker policy test``). Never used for a release, a token or a resource.
    dry_run: Verifier
    #: The release rows' integrity tags checked, and untagged rows adopted (``/sys/v1/integrity``).
    integrity: IntegrityReview

    @classmethod
    def build(cls, settings: Settings) -> Services:
        data_dir = settings.data_dir
        datadir.prepare(data_dir)
        db = Database(settings.database_url)
        db.migrate()
        barrier = Barrier(db)
        configure_auto_unseal(barrier, settings.seal)
        checkpointer = _checkpointer(settings, db, barrier)
        keystore = build_keystore(settings.keystore, barrier)
        tokens = TokenRegistry(db, data_dir / TOKEN_KEY_FILE)
        tokens.register_key()
        replica = Replica(data_dir, db, barrier, tokens)
        cas = replica.cas
        if not barrier.sealed:  # auto-unsealed above, before the replica listened for it
            replica.sync_logged()
        roles = RoleStore(db)
        oidc = OidcProvider(settings.oidc) if settings.oidc is not None else None
        if settings.dev:
            _dev_pki(dev_pki_dir(settings))  # created, or its collateral refreshed, before it is read
            _snp_dev_pki(snp_dev_pki_dir(settings))
        kds_store = KdsStore(db)
        kds = endorsement_source(kds_store)  # SEV-SNP reports that carry no certificates
        if not settings.snp.require_crl:
            log.warning(
                "snp.require_crl is false (UNSAFE): an SEV-SNP report whose chain has no CRL in the KDS "
                "cache is accepted, so a revoked ASK/ASVK passes until its CRL is fetched"
            )
        integrity = RowIntegrity(barrier)
        aks = DbAkRegistry(db, integrity)
        trust = evidence_trust(
            settings,
            DbCollateralSource(db),
            aks=aks,
            snp_endorsements=kds,
            snp_crls=crl_source(kds_store),
            # the dev server owns its dev PKI: it keeps the dev CRLs current (the command line only reads them)
            snp_dev_crl_renewal=_snp_dev_crl_renewal(snp_dev_pki_dir(settings)) if settings.dev else None,
        )
        verifier = REGISTRY.verifier(trust)
        manufacturers, dev_ek = ek_roots(settings)
        if dev_ek:
            log.warning(
                "DEV MODE: TPM EKs certified by tpm.dev_ek_roots (%s) may enrol AKs (their evidence is "
                "simulated: sim=true)",
                ", ".join(str(p) for p in settings.tpm.dev_ek_roots),
            )
        tpm_aks = TpmAkService(
            db,
            ek_roots=manufacturers,
            dev_ek_roots=dev_ek,
            ttl=timedelta(seconds=settings.tpm.enrolment_ttl_seconds),
            integrity=integrity,
        )
        nonce_ttl = timedelta(seconds=settings.nonce_ttl_seconds)
        trusted = [_trusted_issuer(i, t) for i, t in enumerate(settings.trust.attestation_services)]
        limits = settings.limits
        inputs = AppraisalInputs(settings.audit.appraisal_inputs)
        attestation = AttestationService(
            db,
            verifier,
            KeyringStore(db, barrier),
            nonce_ttl,
            trusted=trusted,
            nonce_cap=OutstandingCap("attestation nonces", limits.outstanding_nonces),
            inputs=inputs,
        )
        release = ReleaseService(
            db,
            keystore,
            verifier,
            nonce_ttl,
            nonce_cap=OutstandingCap("key-transfer nonces", limits.outstanding_nonces),
            remote=_remote_attestation(settings),
            integrity=integrity,
            verify_token=attestation.verify_token,
            inputs=inputs,
        )
        services = cls(
            settings,
            db,
            barrier,
            keystore,
            KeyService(db, keystore, cas.issuing, integrity, chain_issuers=(cas.tls.cert,)),
            tokens,
            cas.tls,
            cas.issuing,
            verifier,
            release,
            attestation,
            KbsV0Service(
                db,
                barrier,
                keystore,
                attestation,
                integrity,
                session_cap=OutstandingCap("unattested /kbs/v0 sessions", limits.outstanding_sessions),
                inputs=inputs,
            ),
            UnsealService(
                db,
                barrier,
                FailureLimit(
                    "unseal attempts",
                    limits.unseal_failures_per_client_per_minute,
                    limits.unseal_failures_per_minute,
                ),
            ),
            checkpointer,
            replica,
            roles,
            Authenticator(tokens, roles, oidc),
            oidc,
            inputs,
            tpm_aks,
            REGISTRY.verifier(replace(trust, tpm=dry_run_trust(trust.tpm, aks))),
            IntegrityReview(db, integrity),
        )
        _warn_key_certificates_under_tls_anchor(services.keys, cas)
        if settings.dev:
            services._dev_unseal(data_dir / DEV_UNSEAL_FILE)
        return services

    def _dev_unseal(self, key_file: Path) -> None:
        status = self.barrier.status()
        if not status.initialized:
            try:
                self.barrier.init_devfile(key_file)
            except Conflict:
                pass  # another process initialized it at the same moment: said below
            status = self.barrier.status()
        single = (
            "--dev keeps the unseal key in the data dir that initialized the key store and is for one "
            "data dir on one node: start it with that data dir, or give a new database; for replicas, "
            "run without --dev (docs/ha.md)"
        )
        if not status.initialized:
            raise InvalidInput(
                f"--dev is single-node: another process is initializing the key store with {key_file}; "
                f"{single}",
                field="dev",
            )
        if status.seal_type == "devfile":
            if not key_file.is_file():
                raise InvalidInput(
                    f"--dev is single-node: the key store in this database was initialized by --dev with "
                    f"another data dir, or its unseal key {key_file} was deleted; {single}",
                    field="dev",
                )
            try:
                self.barrier.unseal_devfile(key_file)
            except InvalidInput:
                raise InvalidInput(
                    f"--dev is single-node: {key_file} does not open the key store in this database (it "
                    f"belongs to another data dir's database); {single}",
                    field="dev",
                ) from None
            log.warning(
                "DEV MODE: the key store auto-unsealed from %s. The unseal key sits next to the data: "
                "never use --dev for real keys.",
                key_file,
            )
        else:
            log.warning("--dev given but the key store uses the %s seal: unseal it by hand", status.seal_type)
