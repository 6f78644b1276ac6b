"""The console's route class: strict form bodies and CSRF, the way ``api.body.StrictRoute`` is for JSON.

Every console route is a :class:`StrictFormRoute` (``create_app`` refuses any other class), so no
handler can forget these checks:

- query parameters the route does not take are refused, as on the API (it is a ``StrictRoute``);
- a POST body is ``application/x-www-form-urlencoded`` in UTF-8 only (415 otherwise), at most
  :data:`MAX_FORM_BYTES`, every pair well formed, no NUL, at most :data:`MAX_FIELDS` fields, and a
  field given twice is refused unless the handler asks for a list (:meth:`Form.many`); a handler
  names the fields it takes (:meth:`Form.only`) and any other is refused;
- every POST carries ``csrf`` equal to the token derived from the browser's session cookie (or, on
  the sign-in page, its sign-in cookie), compared in constant time; a request the browser marks as
  cross-site (``Sec-Fetch-Site``) or whose ``Origin`` is not this site is refused before that;
- the response carries the console's security headers (:func:`keybroker.ui.security.harden`), and
  a domain error, or a parameter of the wrong type, becomes an HTML page with the status the API
  would give, not a problem document; so does an unavailable database (503 with ``Retry-After``,
  logged once per outage, as on the API).
"""

from __future__ import annotations

import hmac
import logging
import urllib.parse
from collections.abc import Callable, Collection, Coroutine
from typing import Any

from fastapi import Request, Response
from fastapi.exceptions import RequestValidationError
from sqlalchemy.exc import SQLAlchemyError
from starlette.responses import HTMLResponse

from keybroker.api.body import StrictRoute, media_type
from keybroker.api.problems import is_logged, retry_after, store_error
from keybroker.errors import Forbidden, InvalidInput, KeybrokerError, UnsupportedMediaType
from keybroker.ui import security

log = logging.getLogger("keybroker.ui")

FORM_MEDIA_TYPE = "application/x-www-form-urlencoded"
MAX_FORM_BYTES = 256 * 1024
MAX_FIELDS = 64
CSRF_FIELD = "csrf"


class Form:
    """A parsed form body: each field's values in order."""

    def __init__(self, pairs: list[tuple[str, str]]) -> None:
        self._fields: dict[str, list[str]] = {}
        for name, value in pairs:
            self._fields.setdefault(name, []).append(value)

    def only(self, names: Collection[str], *, lists: Collection[str] = ()) -> Form:
        """Refuse fields other than ``names`` (and ``csrf``), and repeated ones not in ``lists``."""
        for name, values in self._fields.items():
            if name == CSRF_FIELD:
                continue
            if name not in names:
                raise InvalidInput(f"unknown form field {name!r}", field=name)
            if len(values) > 1 and name not in lists:
                raise InvalidInput(f"form field {name!r} is given {len(values)} times", field=name)
        return self

    def get(self, name: str) -> str | None:
        """The field's value, None if absent or blank (surrounding whitespace removed)."""
        values = self._fields.get(name)
        if not values:
            return None
        value = values[0].strip()
        return value or None

    def raw(self, name: str) -> str:
        """The field's value as sent ("" if absent)."""
        values = self._fields.get(name)
        return values[0] if values else ""

    def many(self, name: str) -> list[str]:
        return [v.strip() for v in self._fields.get(name, []) if v.strip()]

    def has(self, name: str) -> bool:
        return name in self._fields


def parse_form(raw: bytes, content_type: str | None) -> Form:
    """A form body read strictly (see the module's docstring)."""
    if media_type(content_type) != FORM_MEDIA_TYPE:
        shown = media_type(content_type) or "none"
        raise UnsupportedMediaType(f"send the form as {FORM_MEDIA_TYPE} (got {shown})")
    for param in (content_type or "").split(";")[1:]:
        name, _, value = param.partition("=")
        if name.strip().lower() == "charset" and value.strip().strip('"').lower() not in ("utf-8", "utf8"):
            raise UnsupportedMediaType("forms are UTF-8 only")
    if len(raw) > MAX_FORM_BYTES:
        raise InvalidInput(f"the form is larger than {MAX_FORM_BYTES} bytes", field="body")
    try:
        text = raw.decode("ascii")  # url-encoded: anything outside ASCII was not encoded
        pairs = urllib.parse.parse_qsl(
            text,
            keep_blank_values=True,
            strict_parsing=bool(text),
            encoding="utf-8",
            errors="strict",
            max_num_fields=MAX_FIELDS,
        )
    except UnicodeDecodeError:
        raise InvalidInput("the form is not valid UTF-8 url-encoding", field="body") from None
    except ValueError as exc:
        raise InvalidInput(f"the form is malformed: {exc}", field="body") from None
    for name, value in pairs:
        if "\x00" in name or "\x00" in value:
            raise InvalidInput(f"form field {name!r} contains U+0000 (NUL)", field=name)
    return Form(pairs)


def form_of(request: Request) -> Form:
    """The form the route class parsed (an empty one for GET)."""
    form: Form | None = getattr(request.state, "form", None)
    return form if form is not None else Form([])


def _same_site(request: Request) -> None:
    fetch_site = request.headers.get("sec-fetch-site")
    if fetch_site is not None and fetch_site not in ("same-origin", "none"):
        raise Forbidden(f"cross-site form posts are refused (Sec-Fetch-Site: {fetch_site[:32]})")
    origin = request.headers.get("origin")
    if origin is not None:
        own = f"{request.url.scheme}://{request.url.netloc}"
        if origin != own:
            raise Forbidden("the form was posted from another origin")


def _check_csrf(request: Request, form: Form) -> None:
    sent = form.raw(CSRF_FIELD)
    expected = [
        security.csrf_token(v)
        for v in (request.cookies.get(security.SESSION_COOKIE), request.cookies.get(security.LOGIN_COOKIE))
        if v
    ]
    if not sent or not any(hmac.compare_digest(sent.encode(), e.encode()) for e in expected):
        raise Forbidden(
            "the form's CSRF token is missing or does not match this browser's session: reload the page"
        )


class StrictFormRoute(StrictRoute):
    """See the module's docstring."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def form_handler(request: Request) -> Response:
            try:
                if request.method == "POST":
                    _same_site(request)
                    form = parse_form(await request.body(), request.headers.get("content-type"))
                    _check_csrf(request, form)
                    request.state.form = form
                response = await handler(request)
            except KeybrokerError as exc:
                response = _error_page(request, exc)
            except RequestValidationError as exc:  # a path or query parameter of the wrong type
                response = _error_page(request, _invalid(exc))
            except SQLAlchemyError as exc:
                unavailable = store_error(request, exc)
                if unavailable is None:
                    raise  # a bug: the API's handler answers 500 and logs it
                response = _error_page(request, unavailable)
            security.harden(request, response)
            return response

        return form_handler


def _invalid(exc: RequestValidationError) -> InvalidInput:
    """A parameter FastAPI refused, worded as the API words it: ``field: message``."""
    first = exc.errors()[0] if exc.errors() else {}
    field = ".".join(str(p) for p in first.get("loc", ())[1:]) or "request"
    return InvalidInput(f"{field}: {first.get('msg', 'invalid value')}", field=field)


def _error_page(request: Request, exc: KeybrokerError) -> Response:
    from keybroker.ui.pages import render_error

    if is_logged(exc):
        log.error("console request failed: %s %s: %s", request.method, request.url.path, exc.diagnostics())
    page: HTMLResponse = render_error(request, exc)
    after = retry_after(exc)
    if after is not None:
        page.headers["Retry-After"] = str(after)
    return page
