"""The Confidential Containers KBS protocol 0.4.0 (``/kbs/v0``), as the CoCo attestation agent speaks it.

auth → a session (in the database, 5 minutes) and a nonce; attest → evidence bound to
HASH(JCS({"tee-pubkey", "nonce", "additional-evidence"})) is verified and appraised and an EAR is
issued; resource → the resource's policy (default: ``ear.status`` affirming and no simulated
evidence, stricter than Trustee's default, which ignores the status) decides, and the resource
leaves as a flattened JWE to the ``tee-pubkey`` the evidence bound.

A resource that serves a keybroker key is a second way out for that key, so it never widens the
first: the key's own transfer policy must allow the same appraisal input too (as ``/kbs/v1``
passport mode evaluates it; no client permissions, since no keybroker token is presented here),
and a key without a transfer policy is never released. Denials tell the caller which check failed
and what it presented, never the policies' expected values; the audit log has them.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import os
import re
import secrets
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import Any, NamedTuple

from joserfc.jwk import ECKey, RSAKey
from sqlalchemy import bindparam, delete, func, insert, select, update
from sqlalchemy.orm import Session

from keybroker import aead, strictjson
from keybroker.appraisal import rego, secl
from keybroker.appraisal.decision import Decision, Reason, denied
from keybroker.appraisal.defaults import default_resource_policy
from keybroker.appraisal.input import AppraisalInput
from keybroker.appraisal.policy import stored_policy
from keybroker.appraisal.registry import REGISTRY
from keybroker.attestation.ear import EarClaims
from keybroker.attestation.service import AttestationService, Attested
from keybroker.audit import log as audit
from keybroker.audit.inputs import AppraisalInputs
from keybroker.errors import Forbidden, InvalidInput, KeybrokerError, NotFound, PolicyDenied, Unauthenticated
from keybroker.keys import wrap
from keybroker.keystores.base import KeyStore
from keybroker.limits import Outstanding, OutstandingCap
from keybroker.seal import integrity
from keybroker.seal.barrier import Barrier
from keybroker.seal.integrity import RowIntegrity
from keybroker.store.db import Database
from keybroker.store.models import KbsResource, KbsSession, Key, TransferPolicy
from keybroker.tee.verifier import KbsV0Binding
from keybroker.wire import binding

PROTOCOL_VERSION = "0.4.0"
#: The TEEs ``/kbs/v0/auth`` accepts: every registered one.
SUPPORTED_TEES = REGISTRY.names
SESSION_TTL = timedelta(minutes=5)
MAX_RESOURCE = 64 * 1024
_HASH_PREFERENCE = ("sha384", "sha512", "sha256")
_PATH_PART = re.compile(r"[A-Za-z0-9_.\-]{1,128}")
_VERSION = re.compile(r"^(\d+)\.(\d+)\.(\d+)$")
log = logging.getLogger("keybroker.kbs_v0")


class _LiveSession(NamedTuple):
    """What the protocol reads of a session."""

    nonce: str
    tee: str
    hash_alg: str
    expires_at: datetime
    attested_at: datetime | None
    ear_token: str | None


class _Resource(NamedTuple):
    """What a release reads of a resource; ``found_key_id`` None: no key, or it was deleted;
    ``key_policy_id`` None: the key has no transfer policy."""

    path: str
    kind: str
    key_id: str | None
    wrapped_dek: bytes | None
    ciphertext: bytes | None
    policy: dict[str, Any] | None
    integrity_tag: str | None
    found_key_id: str | None
    backend_ref: str | None
    key_policy_id: str | None
    key_policy: dict[str, Any] | None
    key_policy_tag: str | None
    key_algorithm: str | None
    key_length: int | None
    key_curve_type: str | None
    key_keystore: str | None
    key_public_key_pem: str | None
    key_tag: str | None

    def key_content(self) -> dict[str, Any]:
        """What the key's integrity tag covers (``found_key_id`` set)."""
        assert self.found_key_id is not None and self.key_algorithm is not None
        assert self.key_keystore is not None
        return integrity.key_content(
            key_id=self.found_key_id,
            algorithm=self.key_algorithm,
            key_length=self.key_length,
            curve_type=self.key_curve_type,
            keystore=self.key_keystore,
            backend_ref=self.backend_ref,
            public_key_pem=self.key_public_key_pem,
            transfer_policy_id=self.key_policy_id,
        )


# The hot path's statements: prepared once, run on the session's connection (Core rows, no ORM
# objects or unit of work; each costs a fraction of an ORM load or flush).
_NEW_SESSION = insert(KbsSession)
_DROP_EXPIRED_SESSIONS = delete(KbsSession).where(KbsSession.expires_at <= bindparam("now"))
# a range of the partial index ix_kbs_sessions_outstanding (expires_at) WHERE attested_at IS NULL
_OUTSTANDING_SESSIONS = select(func.count(), func.min(KbsSession.expires_at)).where(
    KbsSession.expires_at > bindparam("now"), KbsSession.attested_at.is_(None)
)
_READ_SESSION = select(*(getattr(KbsSession, f) for f in _LiveSession._fields)).where(
    KbsSession.id == bindparam("sid")
)
_LOCK_SESSION = _READ_SESSION.with_for_update()
_SPEND_NONCE = update(KbsSession).where(KbsSession.id == bindparam("sid")).values(attested_at=bindparam("at"))
_KEEP_TOKEN = (
    update(KbsSession)
    .where(KbsSession.id == bindparam("sid"))
    .values(ear_token=bindparam("token"), tee_pubkey=bindparam("tee_pubkey"))
)
_READ_RESOURCE = (
    select(
        *(getattr(KbsResource, f) for f in _Resource._fields[:7]),
        Key.id.label("found_key_id"),
        Key.backend_ref,
        Key.transfer_policy_id.label("key_policy_id"),
        TransferPolicy.body.label("key_policy"),
        TransferPolicy.integrity_tag.label("key_policy_tag"),
        Key.algorithm.label("key_algorithm"),
        Key.key_length,
        Key.curve_type.label("key_curve_type"),
        Key.keystore.label("key_keystore"),
        Key.public_key_pem.label("key_public_key_pem"),
        Key.integrity_tag.label("key_tag"),
    )
    .outerjoin(Key, Key.id == KbsResource.key_id)
    .outerjoin(TransferPolicy, TransferPolicy.id == Key.transfer_policy_id)
    .where(KbsResource.path == bindparam("path"))
)
_READ_POLICY = select(TransferPolicy.body, TransferPolicy.integrity_tag).where(
    TransferPolicy.id == bindparam("id")
)


class ResourceInfo(NamedTuple):
    """What an administrator sees of a resource: never its material."""

    path: str
    kind: str
    key_id: str | None
    policy: dict[str, Any] | None
    updated_at: datetime


_RESOURCE_INFO = select(*(getattr(KbsResource, f) for f in ResourceInfo._fields))


def resource_path(repository: str, rtype: str, tag: str) -> str:
    for name, part in (("repository", repository), ("type", rtype), ("tag", tag)):
        if not _PATH_PART.fullmatch(part) or part in (".", ".."):
            raise InvalidInput(f"resource {name} {part!r} must be 1-128 of [A-Za-z0-9_.-]", field=name)
    return f"{repository}/{rtype}/{tag}"


def _dek_aad(path: str) -> bytes:
    return b"keybroker/resource-dek/v1/" + path.encode()


def _res_aad(path: str) -> bytes:
    return b"keybroker/resource/v1/" + path.encode()


@dataclass
class _Attempt:
    """A release attempt as its audit record will tell it: the details, and the appraisal input
    once the token's claims are read."""

    details: dict[str, Any]
    doc: AppraisalInput | None = None


@dataclass(frozen=True)
class Challenge:
    session_id: str
    nonce: str
    extra_params: dict[str, Any] | str


@lru_cache(maxsize=128)
def _compiled(source: str) -> rego.RegoPolicy:
    return rego.compile_policy(source, policy_id="rego:" + hashlib.sha256(source.encode()).hexdigest()[:16])


def _outstanding_sessions(s: Session, now: datetime) -> Outstanding:
    """Drop the expired sessions, then count the unattested ones (anyone can open them)."""
    s.connection().execute(_DROP_EXPIRED_SESSIONS, {"now": now})
    count, first = s.connection().execute(_OUTSTANDING_SESSIONS, {"now": now}).one()
    return Outstanding(count, first)


class KbsV0Service:
    def __init__(
        self,
        db: Database,
        barrier: Barrier,
        keystore: KeyStore,
        attestation: AttestationService,
        integrity: RowIntegrity,
        *,
        session_cap: OutstandingCap,
        inputs: AppraisalInputs | None = None,
    ) -> None:
        """``integrity``: tags the resources written, and a release checks the tags of the resource,
        its key and the policies it decides with (a row changed in the database is never released
        on). ``session_cap``: the unattested sessions allowed (429 past it). ``inputs``: each
        release decision's audit record names its appraisal input (and keeps it)."""
        self._integrity = integrity
        self._session_cap = session_cap
        self._inputs = inputs or AppraisalInputs(0)
        self._db = db
        self._barrier = barrier
        self._keystore = keystore
        self._attestation = attestation

    # --- auth ------------------------------------------------------------------------------------

    def auth(self, version: str, tee: str, extra_params: object) -> Challenge:
        m = _VERSION.match(version)
        if m is None or (int(m.group(1)), int(m.group(2)), int(m.group(3))) > (0, 4, 0) or m.group(1) != "0":
            raise InvalidInput(
                f"protocol version {version!r} is not supported; this server speaks {PROTOCOL_VERSION}",
                field="version",
            )
        if tee not in SUPPORTED_TEES:
            raise InvalidInput(
                f"tee {tee!r} is not supported by this server (supported: {', '.join(SUPPORTED_TEES)})",
                field="tee",
            )
        hash_alg = "sha384"
        out_params: dict[str, Any] | str = ""
        if isinstance(extra_params, str) and extra_params.strip():
            extra_params = strictjson.loads(extra_params, what="extra-params", field="extra-params")
        if isinstance(extra_params, dict):
            offered = extra_params.get("supported-hash-algorithms")
            if offered is not None:
                if not isinstance(offered, list) or not all(isinstance(a, str) for a in offered):
                    raise InvalidInput(
                        "supported-hash-algorithms must be a list of strings", field="extra-params"
                    )
                common = [a for a in _HASH_PREFERENCE if a in {o.lower() for o in offered}]
                if not common:
                    raise InvalidInput(
                        f"none of {offered} is supported; use one of {', '.join(_HASH_PREFERENCE)}",
                        field="extra-params",
                    )
                hash_alg = common[0]
                out_params = {"selected-hash-algorithm": hash_alg}
        nonce = base64.b64encode(secrets.token_bytes(32)).decode()
        now = datetime.now(UTC)
        session_id = str(uuid.uuid4())
        # not durable: a session lost in a machine crash only makes the client authenticate again
        with self._db.session(durable=False) as s:
            # expired sessions are dropped when the cap counts (at most once a second)
            self._session_cap.admit(lambda: _outstanding_sessions(s, now), now)
            s.connection().execute(
                _NEW_SESSION,
                {
                    "id": session_id,
                    "nonce": nonce,
                    "tee": tee,
                    "hash_alg": hash_alg,
                    "created_at": now,
                    "expires_at": now + SESSION_TTL,
                },
            )
        return Challenge(session_id, nonce, out_params)

    # --- attest ----------------------------------------------------------------------------------

    def _session(self, s: Session, session_id: str | None, *, lock: bool = False) -> _LiveSession:
        """The session, if it exists and has not expired; else 401."""
        if not session_id:
            raise Unauthenticated("no kbs-session-id cookie: call /kbs/v0/auth first")
        try:
            uuid.UUID(session_id)
        except ValueError:
            raise Unauthenticated("the kbs-session-id cookie is not a session id") from None
        query = _LOCK_SESSION if lock else _READ_SESSION
        found = s.connection().execute(query, {"sid": session_id}).one_or_none()
        if found is None:
            raise Unauthenticated("unknown session: call /kbs/v0/auth again")
        row = _LiveSession._make(found)
        expires = row.expires_at if row.expires_at.tzinfo else row.expires_at.replace(tzinfo=UTC)
        if expires <= datetime.now(UTC):
            raise Unauthenticated("the session has expired: call /kbs/v0/auth again")
        return row

    def attest(self, session_id: str | None, body: dict[str, Any]) -> str:
        """Evidence → an EAR. Two transactions: the session's nonce spent (committed before the
        evidence is looked at, whatever the outcome), then the decision audited, with the token
        kept in the session by the same transaction when it is a success."""
        runtime = body.get("runtime-data")
        if not isinstance(runtime, dict):
            raise InvalidInput(
                "runtime-data must be an object with nonce and tee-pubkey", field="runtime-data"
            )
        nonce, tee_pubkey = runtime.get("nonce"), runtime.get("tee-pubkey")
        if not isinstance(nonce, str) or not isinstance(tee_pubkey, dict):
            raise InvalidInput(
                "runtime-data needs nonce (string) and tee-pubkey (JWK object)", field="runtime-data"
            )
        _check_jwk(tee_pubkey)
        evidence = body.get("tee-evidence")
        if isinstance(evidence, str):
            evidence = strictjson.loads(evidence, what="tee-evidence", field="tee-evidence")
        if not isinstance(evidence, dict):
            raise InvalidInput("tee-evidence must be an object", field="tee-evidence")
        primary = evidence.get("primary_evidence", evidence)
        additional = evidence.get("additional_evidence", "") if "primary_evidence" in evidence else ""
        if isinstance(primary, str):
            primary = strictjson.loads(
                primary, what="primary_evidence", field="tee-evidence.primary_evidence"
            )
        if not isinstance(primary, dict):
            raise InvalidInput("primary_evidence must be an object", field="tee-evidence.primary_evidence")
        if not isinstance(additional, str):
            raise InvalidInput(
                "additional_evidence must be a string", field="tee-evidence.additional_evidence"
            )
        # Not durable by itself: the outcome is audited durably next (appraise_and_sign), which
        # makes this commit durable too; a machine crash in between issued nothing.
        with self._db.session(durable=False) as s:
            row = self._session(s, session_id, lock=True)
            if row.attested_at is not None:
                raise Forbidden("this session already attested: its nonce is used; call /kbs/v0/auth again")
            if not secrets.compare_digest(nonce, row.nonce):
                raise Forbidden("runtime-data nonce is not this session's challenge nonce")
            tee, hash_alg = row.tee, row.hash_alg
            # the session's TEE reads its own evidence; malformed evidence leaves the nonce unspent
            quote = self._attestation.verifier.plugin(tee).kbs_v0_evidence(primary)
            # the nonce is spent whatever the outcome
            s.connection().execute(_SPEND_NONCE, {"sid": session_id, "at": datetime.now(UTC)})
        expected = KbsV0Binding(nonce, tee_pubkey, additional, hash_alg)

        def keep_token(s: Session, result: Attested) -> None:
            s.connection().execute(
                _KEEP_TOKEN, {"sid": session_id, "token": result.token, "tee_pubkey": tee_pubkey}
            )

        # the token is stored in the transaction that audits the decision
        result = self._attestation.appraise_and_sign(
            tee,
            quote,
            expected,
            nonce=nonce,
            user_data=None,
            runtime_data={"nonce": nonce, "tee-pubkey": tee_pubkey},
            actor=f"kbs-session:{session_id}",
            protocol="kbs/v0",
            on_success=keep_token,
        )
        return result.token

    # --- resources --------------------------------------------------------------------------------

    def get_resource(self, path: str, session_id: str | None, bearer: str | None) -> dict[str, str]:
        """The resource at ``path`` as a JWE to the attested TEE's key, for a ``Bearer`` EAR or else the
        session's EAR. The decision (released or refused) is audited; a missing, expired or
        unattested session or an invalid token is refused (401) before any decision."""
        ear: EarClaims | None = None
        token = bearer
        actor = "bearer-ear" if bearer is not None else f"kbs-session:{session_id}"
        attempt = _Attempt({"protocol": "kbs/v0"})
        try:
            if bearer is None:
                known = self._attestation.known_tokens()  # before the transaction: may load the keyring
                with self._db.session() as s:
                    token = self._attested_token(s, session_id)
                    ear = known(token)
                    if ear is not None:  # our own token, verified already: one transaction
                        return self._release(s, path, ear, actor, attempt)
            assert token is not None
            ear = self._attestation.verify_token(token)  # outside any transaction: ~1 ms of ECDSA
            with self._db.session() as s:
                return self._release(s, path, ear, actor, attempt)
        except KeybrokerError as exc:
            if ear is None:
                raise  # no valid session or token: nothing was decided
            with self._db.session() as s:
                reasons = (
                    exc.explained if isinstance(exc, PolicyDenied) else getattr(exc, "reasons", None)
                ) or [exc.detail]
                self._inputs.append(
                    s,
                    attempt.doc,
                    actor=actor,
                    action="resource.release",
                    object_id=path,
                    outcome="denied" if exc.status in (401, 403) else "failed",
                    reason="; ".join(reasons),
                    details=attempt.details,
                )
            raise

    def _attested_token(self, s: Session, session_id: str | None) -> str:
        token: str | None = self._session(s, session_id).ear_token
        if token is None:
            raise Unauthenticated("this session has not attested: POST /kbs/v0/attest first")
        return token

    def _release(
        self, s: Session, path: str, ear: EarClaims, actor: str, attempt: _Attempt
    ) -> dict[str, str]:
        """Decide, wrap and audit the release in ``s``; ``attempt`` (for the audit) filled on the way."""
        details = attempt.details
        details.update({"tee": ear.tee, "ear_status": ear.status, "token_kid": ear.kid})
        found = s.connection().execute(_READ_RESOURCE, {"path": path}).one_or_none()
        if found is None:
            raise NotFound(f"resource {path} does not exist")
        res = _Resource._make(found)
        self._integrity.check(integrity.resource_content_of(res), res.integrity_tag)
        # the workload key within bounds before anything is appraised (a remote service's token
        # carries whatever its client sent)
        tee_pubkey = _tee_pubkey(ear)
        doc = attempt.doc = ear.appraisal_input(client_permissions=None)
        decision = self._decide(s, res, doc, ear.status)
        details["policy_id"] = decision.policy_id
        details["notes"] = list(decision.notes)
        if res.kind == "key":
            self._decide_key(res, decision, doc, details)
        elif not decision.allowed:
            raise denied(
                "the attestation result does not satisfy the resource's policy",
                decision.findings,
                explain=False,
            )
        try:
            jwe = wrap.jwe_wrap(self._material(s, res), tee_pubkey)
        except KeybrokerError:
            raise
        except Exception as exc:  # a backend or cryptography failure: recorded, not swallowed
            log.error("resource %s: the release was allowed but failed: %s", path, type(exc).__name__)
            raise KeybrokerError(
                f"the resource was allowed but could not be released ({type(exc).__name__})"
            ) from exc
        self._inputs.append(
            s,
            doc,
            actor=actor,
            action="resource.release",
            object_id=path,
            outcome="success",
            details=details,
        )
        return jwe

    def _decide_key(
        self, res: _Resource, resource_decision: Decision, doc: AppraisalInput, details: dict[str, Any]
    ) -> None:
        """Both must allow a resource that serves a key: its policy and the key's transfer policy,
        on the same appraisal input. Denied: every reason of both, each saying whose it is."""
        if res.found_key_id is None:
            raise NotFound(f"the key behind resource {res.path} was deleted")
        details["key_id"] = res.found_key_id
        details["key_policy_id"] = res.key_policy_id
        self._integrity.check(res.key_content(), res.key_tag)
        if res.key_policy_id is not None and res.key_policy is not None:
            self._integrity.check(
                integrity.policy_content(res.key_policy_id, res.key_policy), res.key_policy_tag
            )
        if res.key_policy_id is None or res.key_policy is None:
            key_decision: Decision | None = None
            key_allowed = False
            key_said: list[Reason] = [
                Reason.plain("the key has no transfer policy and is never released", "key_policy").within(
                    _KEY_POLICY
                )
            ]
        elif res.key_policy_id == resource_decision.policy_id:
            # the resource's policy is the key's own: one evaluation, its reasons told once
            details["notes"] = [f"{_BOTH_POLICIES}: {n}" for n in resource_decision.notes]
            if not resource_decision.allowed:
                raise denied(
                    "the attestation result does not satisfy the key's transfer policy (the resource's too)",
                    [r.within(_BOTH_POLICIES) for r in resource_decision.findings],
                    explain=False,
                )
            return
        else:
            key_decision = secl.evaluate_input(
                stored_policy(res.key_policy, policy_id=res.key_policy_id), doc, policy_id=res.key_policy_id
            )
            key_allowed = key_decision.allowed
            key_said = [r.within(_KEY_POLICY) for r in key_decision.findings]
        details["notes"] = [
            *(f"{_RESOURCE_POLICY}: {n}" for n in resource_decision.notes),
            *(f"{_KEY_POLICY}: {n}" for n in (key_decision.notes if key_decision else ())),
        ]
        if resource_decision.allowed and key_allowed:
            return
        if not resource_decision.allowed and not key_allowed:
            why = (
                "the attestation result satisfies neither the resource's policy nor the key's transfer policy"
            )
        elif not key_allowed:
            why = "the attestation result does not satisfy the transfer policy of the key behind the resource"
        else:
            why = "the attestation result does not satisfy the resource's policy"
        resource_said = [r.within(_RESOURCE_POLICY) for r in resource_decision.findings]
        raise denied(why, [*resource_said, *key_said], explain=False)

    def _decide(self, s: Session, res: _Resource, doc: AppraisalInput, ear_status: str) -> Decision:
        policy = res.policy
        if policy is None:
            return default_resource_policy(doc, ear_status=ear_status)
        if "transfer_policy_id" in policy:
            policy_id = str(policy["transfer_policy_id"])
            if policy_id == res.key_policy_id:  # a key resource under its key's own policy: read already
                body, tag = res.key_policy, res.key_policy_tag
            else:
                read = s.connection().execute(_READ_POLICY, {"id": policy_id}).one_or_none()
                body, tag = (None, None) if read is None else read
            if body is None:
                raise Forbidden("the resource's transfer policy no longer exists", reasons=["policy missing"])
            self._integrity.check(integrity.policy_content(policy_id, body), tag)
            return secl.evaluate_input(stored_policy(body, policy_id=policy_id), doc, policy_id=policy_id)
        if "rego" in policy:
            return rego.evaluate(_compiled(str(policy["rego"])), doc)
        raise Forbidden("the resource's policy is of an unknown kind", reasons=["unknown policy kind"])

    def _material(self, s: Session, res: _Resource) -> bytes:
        if res.kind == "key":
            assert res.found_key_id is not None  # _decide_key
            return self._keystore.fetch(s, res.found_key_id, res.backend_ref)
        assert res.wrapped_dek is not None and res.ciphertext is not None
        root = self._barrier.root_key()
        try:
            dek = aead.unseal(root, res.wrapped_dek, _dek_aad(res.path))
            return aead.unseal(dek, res.ciphertext, _res_aad(res.path))
        except aead.UnsealError:
            raise KeybrokerError(f"resource {res.path}: sealed material failed authentication") from None

    # --- admin -------------------------------------------------------------------------------------

    def put_secret(self, path: str, secret: bytes, actor: str) -> None:
        if not 1 <= len(secret) <= MAX_RESOURCE:
            raise InvalidInput(f"a resource is 1 to {MAX_RESOURCE} bytes, got {len(secret)}", field="body")
        root = self._barrier.root_key()
        dek = os.urandom(32)
        self._upsert(
            path,
            actor,
            kind="secret",
            key_id=None,
            wrapped_dek=aead.seal(root, dek, _dek_aad(path)),
            ciphertext=aead.seal(dek, secret, _res_aad(path)),
        )

    def put_key(self, path: str, key_id: str, actor: str) -> None:
        with self._db.session() as s:
            if s.get(Key, key_id) is None:
                raise InvalidInput(f"key_id {key_id} does not name an existing key", field="key_id")
        self._upsert(path, actor, kind="key", key_id=key_id, wrapped_dek=None, ciphertext=None)

    def _upsert(self, path: str, actor: str, **values: Any) -> None:
        now = datetime.now(UTC)
        with self._db.session() as s:
            row = s.get(KbsResource, path, with_for_update=True)
            if row is None:
                row = KbsResource(path=path, policy=None, created_at=now, updated_at=now, **values)
                s.add(row)
            else:
                for k, v in values.items():
                    setattr(row, k, v)
                row.updated_at = now
            self._integrity.tag_resource(row)
            audit.append(
                s,
                actor=actor,
                action="resource.write",
                object_id=path,
                outcome="success",
                details={"kind": values["kind"]} | ({"key_id": values["key_id"]} if values["key_id"] else {}),
            )

    def set_policy(self, path: str, policy: dict[str, Any] | None, actor: str) -> None:
        if policy is not None:
            if "rego" in policy:
                _compiled(str(policy["rego"]))  # validate now: InvalidInput names the problem
        with self._db.session() as s:
            if (
                policy is not None
                and "transfer_policy_id" in policy
                and s.get(TransferPolicy, str(policy["transfer_policy_id"])) is None
            ):
                raise InvalidInput(
                    "transfer_policy_id does not name an existing policy", field="transfer_policy_id"
                )
            row = s.get(KbsResource, path, with_for_update=True)
            if row is None:
                raise NotFound(f"resource {path} does not exist")
            row.policy = policy
            row.updated_at = datetime.now(UTC)
            self._integrity.tag_resource(row)
            audit.append(
                s,
                actor=actor,
                action="resource.policy",
                object_id=path,
                outcome="success",
                details={"policy": None if policy is None else sorted(policy)},
            )

    def resources(self) -> list[ResourceInfo]:
        """Every resource's metadata (never its material), by path."""
        with self._db.session() as s:
            return [ResourceInfo._make(r) for r in s.execute(_RESOURCE_INFO.order_by(KbsResource.path))]

    def resource(self, path: str) -> ResourceInfo:
        """One resource's metadata; :class:`NotFound` if there is none at ``path``."""
        with self._db.session() as s:
            found = s.execute(_RESOURCE_INFO.where(KbsResource.path == path)).one_or_none()
        if found is None:
            raise NotFound(f"resource {path} does not exist")
        return ResourceInfo._make(found)


_TEE_PUBKEY = "runtime-data.tee-pubkey"
_RESOURCE_POLICY = "resource policy"
_KEY_POLICY = "key policy"
_BOTH_POLICIES = "key and resource policy"


def _tee_pubkey(ear: EarClaims) -> RSAKey | ECKey:
    """The TEE's key the token's runtime data carries, checked as at attest."""
    jwk = (ear.runtime_data or {}).get("tee-pubkey")
    if not isinstance(jwk, dict):
        raise Unauthenticated("the attestation token carries no tee-pubkey to wrap the resource to")
    return _check_jwk(jwk)


def _check_jwk(jwk: dict[str, Any]) -> RSAKey | ECKey:
    """The JWK as a public key within the workload key bounds, or :class:`InvalidInput`."""
    from joserfc.errors import JoseError

    field = _TEE_PUBKEY
    key: RSAKey | ECKey
    try:
        if jwk.get("kty") == "RSA":
            key = RSAKey.import_key(jwk)
        elif jwk.get("kty") == "EC":
            key = ECKey.import_key(jwk)
        else:
            raise InvalidInput(f"tee-pubkey kty {jwk.get('kty')!r} is not RSA or EC", field=field)
    except (JoseError, ValueError, TypeError, KeyError):
        raise InvalidInput("tee-pubkey is not a valid JWK", field=field) from None
    if key.is_private:
        raise InvalidInput("tee-pubkey holds private key material; send the public part", field=field)
    binding.check_workload_key(key.public_key, field)
    return key
