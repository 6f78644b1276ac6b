"""Unsealing by hand over an unauthenticated endpoint (as in Vault): shares, reset, their audit
records and the limit on failures.

Anyone who can reach ``/sys/v1/unseal`` can submit a share, so a bogus share given first spoils
the operators' attempt (it is only found out at the threshold). The defences: the attempt's
progress and id are shown (``progress``/``t``/``n``/``nonce``), an attempt can be reset, a failed
attempt is audited (never with the share, nor a hash of it), and failures are rate-limited per
client address and in all. The attempt lives in this process's memory: each replica is unsealed,
and limited, on its own.
"""

from __future__ import annotations

import logging

from keybroker.audit import log as audit
from keybroker.limits import FailureLimit
from keybroker.seal.barrier import Barrier, SealStatus, ShareRejected
from keybroker.store.db import Database

log = logging.getLogger("keybroker.seal")

#: Audit actions: a share that unsealed ("success") or was refused ("failed"); a reset.
UNSEAL = "sys.unseal"
UNSEAL_RESET = "sys.unseal.reset"


class UnsealService:
    def __init__(self, db: Database, barrier: Barrier, limit: FailureLimit) -> None:
        self._db = db
        self._barrier = barrier
        self._limit = limit

    def submit(self, share_b64: str, client: str) -> SealStatus:
        """Give one share from ``client`` (its address, see :func:`keybroker.limits.client_key`)."""
        self._limit.check(client)
        was_sealed = self._barrier.sealed
        try:
            status = self._barrier.submit_share(share_b64)
        except ShareRejected as exc:
            self._limit.charge(client)
            self._audit_failure(exc, client)
            raise
        if was_sealed and not status.sealed:
            # whoever completed a threshold of genuine shares acted as the operators
            with self._db.session() as s:
                audit.append(
                    s, actor="operator", action=UNSEAL, outcome="success", details={"client": client}
                )
            log.info("the key store was unsealed (last share from %s)", client)
        return status

    def reset(self, client: str) -> SealStatus:
        """Discard the shares given so far. Counted as a failure: it undoes others' work."""
        self._limit.check(client)
        self._limit.charge(client)
        result = self._barrier.reset()
        with self._db.session() as s:
            audit.append(
                s,
                actor="anonymous",
                action=UNSEAL_RESET,
                outcome="success",
                details={"client": client, "attempt": result.attempt, "discarded": result.discarded},
            )
        if result.discarded:
            log.warning(
                "unseal attempt %s reset by %s: %d share(s) discarded",
                result.attempt,
                client,
                result.discarded,
            )
        return result.status

    def _audit_failure(self, exc: ShareRejected, client: str) -> None:
        status = self._barrier.status()
        details = {
            "client": client,
            "check": exc.check,
            "attempt": exc.attempt,
            "progress": status.progress,
            "threshold": status.threshold,
        }
        if exc.discarded:
            details["discarded"] = exc.discarded
        with self._db.session() as s:
            audit.append(
                s, actor="anonymous", action=UNSEAL, outcome="failed", reason=exc.detail, details=details
            )
        log.warning("unseal share refused (%s) from %s: %s", exc.check, client, exc.detail)
