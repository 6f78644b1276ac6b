"""One error hierarchy for the whole project.

Domain code raises these; the API layer maps them to RFC 9457 problem documents in one
place (``keybroker.api.problems``) and the CLI maps them to exit codes. Messages state the
fact and the numbers and never contain key material.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


class KeybrokerError(Exception):
    """Base class. ``title`` is a short fixed summary; ``str(self)`` is the detail."""

    title = "Error"
    #: HTTP status the API maps this error to.
    status = 500
    #: CLI exit code (keybroker.cli.common): 1 failed, 2 usage, 3 unreachable, 4 TLS verification failed.
    exit_code = 1

    def __init__(self, detail: str, **extra: Any) -> None:
        super().__init__(detail)
        self.detail = detail
        self.extra: dict[str, Any] = extra

    def diagnostics(self) -> str:
        """Human-readable text for the CLI."""
        return f"{self.title}: {self.detail}"


class InvalidInput(KeybrokerError):
    """The caller sent something malformed (bad field, bad encoding, wrong size)."""

    title = "Invalid input"
    status = 400
    exit_code = 2

    def __init__(self, detail: str, *, field: str | None = None, **extra: Any) -> None:
        super().__init__(detail, **extra)
        self.field = field
        if field is not None:
            self.extra.setdefault("field", field)


class NotFound(KeybrokerError):
    title = "Not found"
    status = 404


class Conflict(KeybrokerError):
    title = "Conflict"
    status = 409


class Unauthenticated(KeybrokerError):
    title = "Unauthenticated"
    status = 401


class Forbidden(KeybrokerError):
    title = "Forbidden"
    status = 403


class Sealed(KeybrokerError):
    title = "Service sealed"
    status = 503


class BackendUnavailable(KeybrokerError):
    title = "Backend unavailable"
    status = 503


class AuditChainAlarm(BackendUnavailable):
    """The audit chain head cannot be authenticated: nothing is appended to it, no key is served."""

    title = "Audit chain alarm"


class UnsupportedMediaType(KeybrokerError):
    title = "Unsupported media type"
    status = 415


class PayloadTooLarge(KeybrokerError):
    title = "Payload too large"
    status = 413


class TooManyRequests(KeybrokerError):
    """A rate limit or a cap on outstanding challenges was reached; ``retry_after`` seconds (>= 1)
    is when asking again may succeed (the ``Retry-After`` header)."""

    title = "Too many requests"
    status = 429

    def __init__(self, detail: str, *, retry_after: int) -> None:
        self.retry_after = max(1, retry_after)
        super().__init__(detail, retry_after=self.retry_after)


# --- evidence ---------------------------------------------------------------------------


class EvidenceError(KeybrokerError):
    """Base for evidence problems: parsing or verification failed."""

    title = "Evidence rejected"
    status = 400


class EvidenceParseError(EvidenceError):
    """The evidence bytes are not a well-formed structure (length, reserved bytes, version)."""

    title = "Malformed evidence"

    def __init__(self, detail: str, *, field: str | None = None, offset: int | None = None) -> None:
        super().__init__(detail)
        self.field = field
        self.offset = offset
        if field is not None:
            self.extra["field"] = field
        if offset is not None:
            self.extra["offset"] = offset


class VerificationError(EvidenceError):
    """A cryptographic or collateral check failed. ``check`` names the failed step."""

    title = "Evidence verification failed"

    def __init__(self, detail: str, *, check: str) -> None:
        super().__init__(detail, check=check)
        self.check = check


class CollateralError(KeybrokerError):
    """Collateral is missing, malformed or does not fit the evidence."""

    title = "Collateral problem"
    status = 400


class CollateralNotFound(CollateralError, NotFound):
    title = "No cached collateral"
    status = 404


class UntrustedCollateralRoot(CollateralError):
    """A piece of collateral whose issuer chain (or CRL issuer) ends at a root that is not trusted.

    ``root_sha256`` is the SHA-256 of that root certificate's DER (None for a CRL whose issuer is
    no trusted root: its certificate is not in hand); ``root_name`` its common name."""

    def __init__(self, detail: str, *, root_sha256: str | None, root_name: str) -> None:
        super().__init__(detail, root_sha256=root_sha256, root_name=root_name)
        self.root_sha256 = root_sha256
        self.root_name = root_name


class PolicyDenied(KeybrokerError):
    """Appraisal denied the request; ``reasons`` list each failed clause as the caller may be told
    it, ``explained`` as the audit log records it (with the policy's expected values; default: the
    same as ``reasons``). Only ``reasons`` reach the response."""

    title = "Denied by policy"
    status = 403

    def __init__(
        self, detail: str, *, reasons: Sequence[str], explained: Sequence[str] | None = None
    ) -> None:
        super().__init__(detail, reasons=list(reasons))
        self.reasons = list(reasons)
        self.explained = list(reasons if explained is None else explained)
