"""Console sessions in the database (so every replica knows them, and signing out ends them).

A session is found by the SHA-256 of the browser's cookie secret. It ends after
``console.session_idle_seconds`` without a request or ``console.session_max_seconds`` after sign-in,
whichever comes first, and when its person signs out. A pending sign-in (sent to the OpenID
provider) is a row too, keyed by the sign-in cookie, used once and for 10 minutes at most.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import delete
from sqlalchemy.orm import Session as OrmSession

from keybroker.audit import log as audit
from keybroker.auth.oidc import Identity
from keybroker.config import ConsoleSettings
from keybroker.errors import Unauthenticated
from keybroker.store.db import Database
from keybroker.store.models import ConsoleSession
from keybroker.ui import security

#: How often ``last_seen_at`` is written while a session is in use (not at every request).
TOUCH_EVERY = timedelta(seconds=30)
PENDING_FOR = timedelta(seconds=security.LOGIN_SECONDS)


def _utc(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=UTC)


@dataclass(frozen=True)
class Session:
    """A signed-in person, as the console knows them."""

    source: str
    subject: str
    email: str | None
    name: str | None
    roles: tuple[str, ...]
    expires_at: datetime


@dataclass(frozen=True)
class PendingSignIn:
    state: str
    nonce: str
    code_verifier: str


class SessionStore:
    def __init__(self, db: Database, conf: ConsoleSettings) -> None:
        self._db = db
        self._idle = timedelta(seconds=conf.session_idle_seconds)
        self._max = timedelta(seconds=conf.session_max_seconds)

    @staticmethod
    def _sweep(s: OrmSession, now: datetime) -> None:
        s.execute(delete(ConsoleSession).where(ConsoleSession.expires_at < now))

    # --- OpenID sign-in under way -------------------------------------------------------------

    def begin(self, login_secret: str, pending: PendingSignIn) -> None:
        now = datetime.now(UTC)
        with self._db.session() as s:
            self._sweep(s, now)
            s.merge(
                ConsoleSession(
                    id=security.secret_id(login_secret),
                    state="pending",
                    source="oidc",
                    roles=[],
                    oidc_state=pending.state,
                    oidc_nonce=pending.nonce,
                    oidc_verifier=pending.code_verifier,
                    created_at=now,
                    last_seen_at=now,
                    expires_at=now + PENDING_FOR,
                )
            )

    def take_pending(self, login_secret: str | None, state: str | None) -> PendingSignIn:
        """The sign-in this browser started, if ``state`` is the one it was sent with; used once."""
        if not login_secret:
            raise Unauthenticated(
                "this browser started no sign-in (its sign-in cookie is missing or expired): sign in again"
            )
        now = datetime.now(UTC)
        with self._db.session() as s:
            row = s.get(ConsoleSession, security.secret_id(login_secret), with_for_update=True)
            if row is None or row.state != "pending":
                raise Unauthenticated("no sign-in of this browser is under way: sign in again")
            s.delete(row)
            if _utc(row.expires_at) < now:
                raise Unauthenticated("the sign-in took longer than 10 minutes: sign in again")
            assert row.oidc_state and row.oidc_nonce and row.oidc_verifier
            if not state or not hmac.compare_digest(state.encode(), row.oidc_state.encode()):
                raise Unauthenticated("the sign-in's state does not match the one this browser was sent with")
            return PendingSignIn(row.oidc_state, row.oidc_nonce, row.oidc_verifier)

    # --- sessions ------------------------------------------------------------------------------

    def create(self, source: str, identity: Identity, *, client: str) -> str:
        """A new session for ``identity``; returns the cookie secret. Audited (``console.login``)."""
        secret = security.new_secret()
        now = datetime.now(UTC)
        with self._db.session() as s:
            self._sweep(s, now)
            s.add(
                ConsoleSession(
                    id=security.secret_id(secret),
                    state="active",
                    source=source,
                    subject=identity.subject,
                    email=identity.email,
                    name=identity.name,
                    roles=list(identity.roles),
                    created_at=now,
                    last_seen_at=now,
                    expires_at=now + self._max,
                )
            )
            audit.append(
                s,
                actor=actor_name(source, identity.subject, identity.email),
                action="console.login",
                outcome="success",
                details={
                    "source": source,
                    "sub": identity.subject,
                    "email": identity.email,
                    "name": identity.name,
                    "roles": list(identity.roles),
                    "client": client,
                },
            )
        return secret

    def get(self, secret: str | None) -> Session | None:
        """The session of this cookie secret, if it is active and has not timed out."""
        if not secret or len(secret) > 128:
            return None
        now = datetime.now(UTC)
        sid = security.secret_id(secret)
        with self._db.session() as s:
            row = s.get(ConsoleSession, sid)
            if row is None or row.state != "active" or row.subject is None:
                return None
            if _utc(row.expires_at) <= now or _utc(row.last_seen_at) + self._idle <= now:
                s.delete(row)
                return None
            if now - _utc(row.last_seen_at) >= TOUCH_EVERY:
                row.last_seen_at = now
            return Session(
                row.source,
                row.subject,
                row.email,
                row.name,
                tuple(row.roles or ()),
                min(_utc(row.expires_at), _utc(row.last_seen_at) + self._idle),
            )

    def end(self, secret: str | None) -> Session | None:
        """Sign out: the session is deleted (audited ``console.logout``)."""
        if not secret:
            return None
        found = self.get(secret)
        with self._db.session() as s:
            s.execute(delete(ConsoleSession).where(ConsoleSession.id == security.secret_id(secret)))
            if found is not None:
                audit.append(
                    s,
                    actor=actor_name(found.source, found.subject, found.email),
                    action="console.logout",
                    outcome="success",
                )
        return found


def actor_name(source: str, subject: str, email: str | None) -> str:
    """As ``api.deps.actor_of`` names the same person."""
    if source == "oidc":
        return f"oidc:{subject}" + (f" <{email}>" if email else "")
    return f"{source}:{subject}"
