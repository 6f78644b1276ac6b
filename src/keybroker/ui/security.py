"""The console's browser-facing protections: cookies, CSRF tokens and response headers.

- The session cookie ``__Host-kb_session`` is ``Secure; HttpOnly; SameSite=Strict; Path=/`` with no
  ``Domain`` (the ``__Host-`` prefix makes the browser insist on that). It holds a random secret;
  the database keeps only its SHA-256.
- The sign-in cookie ``__Host-kb_login`` ties an OpenID sign-in (its ``state``, nonce and PKCE
  verifier) or the sign-in form to this browser. It is ``SameSite=Lax``, the one exception: the
  provider sends the browser back with a top-level cross-site GET, on which a Strict cookie would not
  be sent; it lives 10 minutes and signs nobody in by itself.
- CSRF tokens are derived from those secrets (HMAC-SHA256), so nothing more is stored and a token is
  worthless without the cookie it came from.
- Every console response carries a strict Content-Security-Policy (no inline script or style, no
  other origin; htmx is served from ``/ui/static``), ``frame-ancestors 'none'``, no referrer to other sites,
  ``nosniff``, and ``Cache-Control: no-store`` on pages.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

from fastapi import Request, Response

SESSION_COOKIE = "__Host-kb_session"
LOGIN_COOKIE = "__Host-kb_login"
LOGIN_SECONDS = 600
_CSRF_LABEL = b"keybroker/console-csrf/v1"

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)


def new_secret() -> str:
    return secrets.token_urlsafe(32)


def secret_id(secret: str) -> str:
    """What the database keeps of a cookie's secret."""
    return hashlib.sha256(secret.encode()).hexdigest()


def csrf_token(secret: str) -> str:
    mac = hmac.new(secret.encode(), _CSRF_LABEL, hashlib.sha256).digest()
    return base64.urlsafe_b64encode(mac).rstrip(b"=").decode()


def set_session_cookie(response: Response, secret: str) -> None:
    response.set_cookie(SESSION_COOKIE, secret, path="/", secure=True, httponly=True, samesite="strict")


def clear_session_cookie(response: Response) -> None:
    response.delete_cookie(SESSION_COOKIE, path="/", secure=True, httponly=True, samesite="strict")


def set_login_cookie(response: Response, secret: str) -> None:
    response.set_cookie(
        LOGIN_COOKIE, secret, max_age=LOGIN_SECONDS, path="/", secure=True, httponly=True, samesite="lax"
    )


def clear_login_cookie(response: Response) -> None:
    response.delete_cookie(LOGIN_COOKIE, path="/", secure=True, httponly=True, samesite="lax")


def harden(request: Request, response: Response) -> None:
    h = response.headers
    h["Content-Security-Policy"] = CSP
    h["X-Content-Type-Options"] = "nosniff"
    h["X-Frame-Options"] = "DENY"
    h["Referrer-Policy"] = "same-origin"  # "no-referrer" would make the browser send Origin: null
    h["Cross-Origin-Opener-Policy"] = "same-origin"
    h["Permissions-Policy"] = "camera=(), microphone=(), geolocation=()"
    if request.url.scheme == "https":
        h["Strict-Transport-Security"] = "max-age=31536000"
    if not request.url.path.startswith("/ui/static/"):
        h["Cache-Control"] = "no-store"
