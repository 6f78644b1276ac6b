"""Request bodies: every JSON body is read by :mod:`keybroker.strictjson`, on every route.

Routes that declare a pydantic body get it through :class:`StrictRoute` (the route class of
every router; ``create_app`` refuses to start with a route of another class). FastAPI would read
such a body with ``json.loads`` and turn whatever went wrong into one generic 400. Routes that read
the body themselves (``/kbs/v1/keys/{id}/transfer``, ``/kbs/v0/attest``, a JSON
``/kbs/v0/resource`` write) call :func:`decode_json`. Raw-secret bodies stay bytes.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any, Final

from fastapi import Request, Response
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute

from keybroker import strictjson
from keybroker.errors import InvalidInput, UnsupportedMediaType

JSON_MEDIA_TYPE: Final = "application/json"
_UTF8: Final = frozenset({"utf-8", "utf8"})


def media_type(content_type: str | None) -> str:
    """The media type of a Content-Type header, lower case, without parameters ("" if absent)."""
    return (content_type or "").split(";", 1)[0].strip().lower()


def check_json_content_type(content_type: str | None) -> None:
    """415 unless ``content_type`` is ``application/json`` with no charset other than UTF-8."""
    if media_type(content_type) != JSON_MEDIA_TYPE:
        shown = f"Content-Type {media_type(content_type)}" if content_type else "no Content-Type"
        raise UnsupportedMediaType(f"send the body as Content-Type: application/json (got {shown})")
    for param in (content_type or "").split(";")[1:]:
        name, _, value = param.partition("=")
        if name.strip().lower() == "charset":
            charset = value.strip().strip('"').lower()
            if charset not in _UTF8:
                raise UnsupportedMediaType(
                    f"JSON bodies are UTF-8 (RFC 8259); charset={charset} is not accepted", charset=charset
                )


def decode_json(raw: bytes, content_type: str | None) -> Any:
    """A JSON request body: the Content-Type checked, then the bytes read strictly."""
    check_json_content_type(content_type)
    return strictjson.loads(raw)


class StrictJsonRequest(Request):
    """A request whose ``json()`` is :func:`decode_json` (FastAPI reads pydantic bodies through it)."""

    _strict_json: Any

    async def json(self) -> Any:
        if not hasattr(self, "_strict_json"):
            self._strict_json = decode_json(await self.body(), self.headers.get("content-type"))
        return self._strict_json


def _query_names(dependant: Dependant) -> frozenset[str]:
    names = {field.alias for field in dependant.query_params}
    for sub in dependant.dependencies:
        names |= _query_names(sub)
    return frozenset(names)


class StrictRoute(APIRoute):
    """Decodes a declared JSON body before FastAPI sees it, so that a bad one is our problem (415 or
    a 400 naming what is wrong), not FastAPI's generic "error parsing the body"; and refuses query
    parameters the route does not take (``GET /kbs/v1/keys?keylength=2048`` listed every key)."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()
        takes_body = self.body_field is not None
        known = _query_names(self.dependant)

        async def strict_handler(request: Request) -> Response:
            unknown = sorted(set(request.query_params) - known)
            if unknown:
                takes = f"it takes {', '.join(sorted(known))}" if known else "it takes none"
                raise InvalidInput(f"unknown query parameter {unknown[0]!r} ({takes})", field=unknown[0])
            for name, value in request.query_params.multi_items():
                if "\x00" in value:  # PostgreSQL text cannot hold it: a filter with it was a 500
                    raise InvalidInput(f"{name} contains U+0000 (NUL), which is not accepted", field=name)
            strict = StrictJsonRequest(request.scope, request.receive)
            if takes_body and await strict.body():
                await strict.json()
            return await handler(strict)

        return strict_handler
