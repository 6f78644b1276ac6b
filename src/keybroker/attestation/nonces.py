"""Server nonces: 32 random bytes, single use, short-lived, kept in the database so that every
replica sees them and a restart loses none. Only SHA-256(nonce) is stored.

Anyone may ask for a nonce, so issuing is capped (:class:`~keybroker.limits.OutstandingCap`, per
purpose) and expired nonces are dropped when they expire (at the next count, at most a second
later while nonces are being asked for), not kept.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import bindparam, delete, func, insert, select, update
from sqlalchemy.orm import Session

from keybroker.errors import Forbidden, InvalidInput
from keybroker.limits import Outstanding, OutstandingCap
from keybroker.store.models import Nonce

NONCE_SIZE = 32


@dataclass(frozen=True)
class IssuedNonce:
    value: bytes
    issued_at: datetime
    expires_at: datetime

    @property
    def b64(self) -> str:
        return base64.b64encode(self.value).decode()


def _id(value: bytes) -> str:
    return hashlib.sha256(value).hexdigest()


def decode_nonce(text: str, field: str = "nonce") -> bytes:
    try:
        value = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidInput(f"{field} is not valid base64", field=field) from None
    if len(value) != NONCE_SIZE:
        raise InvalidInput(f"{field} is {len(value)} bytes, expected {NONCE_SIZE}", field=field)
    return value


# Prepared once: nonces are issued and used on every release.
_ISSUE = insert(Nonce)
_CONSUMABLE = (
    Nonce.id == bindparam("b_id"),
    Nonce.purpose == bindparam("b_purpose"),
    Nonce.used_at.is_(None),
    Nonce.expires_at > bindparam("b_now"),
)
_CONSUME = (
    update(Nonce)
    .where(*_CONSUMABLE, Nonce.subject == bindparam("b_subject"))
    .values(used_at=bindparam("b_used"))
)
_CONSUME_UNBOUND = (
    update(Nonce).where(*_CONSUMABLE, Nonce.subject.is_(None)).values(used_at=bindparam("b_used"))
)
# The expired (ix_nonces_expires_at), and the outstanding of a purpose: a range of the partial index
# ix_nonces_outstanding (purpose, expires_at) WHERE used_at IS NULL, as long as the cap allows.
_DROP_EXPIRED = delete(Nonce).where(Nonce.expires_at <= bindparam("b_now"))
_OUTSTANDING = select(func.count(), func.min(Nonce.expires_at)).where(
    Nonce.purpose == bindparam("b_purpose"), Nonce.expires_at > bindparam("b_now"), Nonce.used_at.is_(None)
)


def outstanding(session: Session, purpose: str, now: datetime) -> Outstanding:
    """Drop the expired nonces (of every purpose), then count the outstanding ones of ``purpose``."""
    conn = session.connection()
    conn.execute(_DROP_EXPIRED, {"b_now": now})
    count, first = conn.execute(_OUTSTANDING, {"b_purpose": purpose, "b_now": now}).one()
    return Outstanding(count, first)


def issue(
    session: Session,
    *,
    purpose: str,
    subject: str | None,
    ttl: timedelta,
    now: datetime | None = None,
    value: bytes | None = None,
    cap: OutstandingCap | None = None,
) -> IssuedNonce:
    """Create a nonce for ``purpose`` (e.g. ``kbs-v1-transfer``), optionally tied to ``subject`` (a key id).

    ``value``: a nonce made elsewhere (a remote attestation service's), recorded here so that it is
    single use and tied to ``subject`` here too. None: 32 fresh random bytes.
    ``cap``: the outstanding nonces of ``purpose`` allowed (TooManyRequests past it); expired nonces
    are dropped when it counts. None: neither capped nor swept (tools and tests; the services always
    pass theirs).
    """
    now = now or datetime.now(UTC)
    if value is None:
        value = secrets.token_bytes(NONCE_SIZE)
    elif len(value) != NONCE_SIZE:
        raise InvalidInput(f"a nonce is {NONCE_SIZE} bytes, not {len(value)}", field="nonce")
    if cap is not None:
        cap.admit(lambda: outstanding(session, purpose, now), now)
    session.connection().execute(
        _ISSUE,
        {
            "id": _id(value),
            "purpose": purpose,
            "subject": subject,
            "created_at": now,
            "expires_at": now + ttl,
        },
    )
    return IssuedNonce(value, now, now + ttl)


_STATE = select(Nonce.purpose, Nonce.subject, Nonce.used_at, Nonce.expires_at).where(
    Nonce.id == bindparam("b_id")
)


def _refusal(session: Session, value: bytes, purpose: str, subject: str | None, now: datetime) -> str | None:
    """Why the nonce cannot be used now (None: it can)."""
    row = session.connection().execute(_STATE, {"b_id": _id(value)}).one_or_none()
    if row is None or row.purpose != purpose:
        return "unknown nonce (not issued by this service, or expired and dropped)"
    if row.subject != subject:
        return "the nonce was issued for another key"
    if row.used_at is not None:
        return "the nonce was already used (replay)"
    expires = row.expires_at if row.expires_at.tzinfo else row.expires_at.replace(tzinfo=UTC)
    if expires <= now:
        return "the nonce has expired"
    return None


def check(
    session: Session, value: bytes, *, purpose: str, subject: str | None, now: datetime | None = None
) -> datetime:
    """Refuse (Forbidden) a nonce that :func:`consume` would refuse at ``now``, without using it.

    Returns ``now``: pass it to :func:`consume` in the transaction that records the request's
    outcome, so that the nonce is spent with that record or not at all, and a nonce presented
    while valid is not refused as expired because the evidence took time to verify.
    """
    now = now or datetime.now(UTC)
    why = _refusal(session, value, purpose, subject, now)
    if why is not None:
        raise Forbidden(why, reasons=[why])
    return now


def consume(
    session: Session, value: bytes, *, purpose: str, subject: str | None, now: datetime | None = None
) -> None:
    """Mark the nonce used. Unknown, expired, reused or foreign (other purpose/subject) → Forbidden.

    The conditional UPDATE makes the check-and-use atomic across replicas. ``now``: the time the
    nonce was presented (its :func:`check`); the use is recorded at that time.
    """
    now = now or datetime.now(UTC)
    params = {"b_id": _id(value), "b_purpose": purpose, "b_now": now, "b_used": now}
    if subject is None:
        result = session.connection().execute(_CONSUME_UNBOUND, params)
    else:
        result = session.connection().execute(_CONSUME, {**params, "b_subject": subject})
    if result.rowcount != 1:
        why = _refusal(session, value, purpose, subject, now) or "the nonce was already used (replay)"
        raise Forbidden(why, reasons=[why])
