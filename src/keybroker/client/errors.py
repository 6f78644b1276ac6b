"""The client's errors: what the broker said, and what went wrong on the way.

They extend :mod:`keybroker.errors` so the CLI maps them to exit codes in one place:
:class:`Denied` (the broker refused: 1), :class:`Unreachable` (no usable answer: 3;
:class:`TlsVerificationFailed`: 4),
``InvalidInput`` (the caller's mistake: 2). Messages never carry key material.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from keybroker.errors import KeybrokerError


class Denied(KeybrokerError):
    """The broker answered 4xx: ``status``, its ``detail`` and ``reasons`` (one per failed clause)."""

    title = "Denied"
    status = 403

    def __init__(
        self, detail: str, *, status: int, reasons: Sequence[str] = (), problem: dict[str, Any] | None = None
    ) -> None:
        super().__init__(detail, reasons=list(reasons))
        self.status = status
        self.reasons = list(reasons)
        self.problem = dict(problem or {})

    def diagnostics(self) -> str:
        lead = (
            "denied by the key broker" if self.status in (401, 403) else "the key broker refused the request"
        )
        lines = [f"{lead} ({self.status}): {self.detail}"]
        lines += [f"  - {r}" for r in self.reasons]
        for key in ("check", "field"):
            if key in self.problem and not self.reasons:
                lines.append(f"  {key}: {self.problem[key]}")
        return "\n".join(lines)


class Unreachable(KeybrokerError):
    """No usable answer from the broker: network errors or 5xx after all retries, TLS failures."""

    title = "Key broker unreachable"
    status = 503


class TlsVerificationFailed(Unreachable):
    """The server's certificate did not verify against the configured CA or pin (never retried)."""

    title = "TLS verification failed"


class Inconsistent(KeybrokerError):
    """The broker's answers contradict each other (a released key is not the one it announced)."""

    title = "Inconsistent answer"
    status = 502


class EvidenceUnavailable(KeybrokerError):
    """The TEE could not produce evidence (device missing, kernel error, quoting service down)."""

    title = "No evidence"
    status = 500


class OutputError(KeybrokerError):
    """The released key could not be written where it was asked to go."""

    title = "Cannot write the key"
    status = 500


class TokenError(KeybrokerError):
    """The PKCS#11 token refused an operation or holds a conflicting object."""

    title = "PKCS#11 token"
    status = 500
