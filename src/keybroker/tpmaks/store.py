"""The enrolled AKs and their clocks, read by the TPM verifier (``tee.tpm.trust.AkRegistry``)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Final, cast

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from keybroker.seal import integrity
from keybroker.seal.integrity import RowIntegrity
from keybroker.store.db import Database
from keybroker.store.models import TpmAk, TpmAkClock
from keybroker.tee.tpm.abi import parse_tpmt_public
from keybroker.tee.tpm.trust import AkStatus, ClockReading, EkRoot, EnrolledAk
from keybroker.tpmaks.service import ak_clock_key

__all__ = ["DbAkRegistry", "enrolled_ak"]

#: Counters are stored as signed 64-bit integers; a TPM clock (ms) never gets near this.
_MAX: Final = 2**63 - 1


def enrolled_ak(row: TpmAk) -> EnrolledAk:
    return EnrolledAk(
        name=bytes.fromhex(row.name),
        public=row.public,
        ek_public=row.ek_public,
        status=cast(AkStatus, row.status),
        ek_root=cast(EkRoot, row.ek_root),
        ek_issuer=row.ek_issuer,
        ek_root_sha256=row.ek_root_sha256,
        enrolled_by=row.enrolled_by,
        enrolled_at=row.enrolled_at,
        approved_by=row.approved_by,
        revoked_by=row.revoked_by,
        label=row.label,
    )


def _key(r: ClockReading) -> tuple[int, int, int]:
    return (r.reset_count, r.restart_count, r.clock)


class DbAkRegistry:
    """:class:`keybroker.tee.tpm.trust.AkRegistry` over the database."""

    def __init__(self, db: Database, integrity: RowIntegrity | None) -> None:
        """``integrity``: an approved AK is trusted only if its row's tag verifies (refused with
        ``IntegrityFailure`` otherwise). None only for a read-only dry run on a sealed database (the
        CLI's ``policy test``), which releases nothing."""
        self._db = db
        self._integrity = integrity

    def enrolled(self, name: bytes) -> EnrolledAk | None:
        with self._db.session() as s:
            row = s.get(TpmAk, name.hex())
            if row is None:
                return None
            if row.status == "approved" and self._integrity is not None:
                self._integrity.check(integrity.ak_content_of(row), row.integrity_tag)
            return enrolled_ak(row)

    def revoked(self, ak: str) -> EnrolledAk | None:
        with self._db.session() as s:
            rows = list(s.scalars(select(TpmAk).where(TpmAk.status == "revoked")))
        for row in rows:
            if ak_clock_key(parse_tpmt_public(row.public)) == ak:
                return enrolled_ak(row)
        return None

    def observe(self, ak: str, reading: ClockReading) -> ClockReading | None:
        now = ClockReading(min(reading.clock, _MAX), reading.reset_count, reading.restart_count)
        for _ in range(2):  # a first reading racing another replica's: read theirs the second time
            try:
                return self._observe(ak, now)
            except IntegrityError:
                continue
        return self._observe(ak, now)

    def _observe(self, ak: str, now: ClockReading) -> ClockReading | None:
        stamp = datetime.now(UTC)
        with self._db.session() as s:
            row = s.get(TpmAkClock, ak, with_for_update=True)
            if row is None:
                s.add(
                    TpmAkClock(
                        ak=ak,
                        clock=now.clock,
                        reset_count=now.reset_count,
                        restart_count=now.restart_count,
                        updated_at=stamp,
                    )
                )
                s.flush()
                return None
            previous = ClockReading(row.clock, row.reset_count, row.restart_count)
            if _key(now) >= _key(previous):
                row.clock, row.reset_count, row.restart_count = now.clock, now.reset_count, now.restart_count
                row.updated_at = stamp
            return previous

    def forget_clock(self, ak: str) -> None:
        with self._db.session() as s:
            row = s.get(TpmAkClock, ak, with_for_update=True)
            if row is not None:
                s.delete(row)
