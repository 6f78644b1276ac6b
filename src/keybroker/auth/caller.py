"""Who is acting: the caller of an authenticated API route, as the audit log names it."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Caller"]


@dataclass(frozen=True)
class Caller:
    """Who is acting, for the audit log."""

    actor: str
