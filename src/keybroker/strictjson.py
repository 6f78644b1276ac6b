"""The one JSON reader for untrusted input: I-JSON (RFC 7493) with bounds, or ``InvalidInput``.

Python's ``json.loads`` accepts what no peer of ours sends and fails in ways the caller does not
expect: it guesses UTF-16/32 from bytes and skips a BOM, raises ``UnicodeDecodeError`` on bad UTF-8,
``RecursionError`` on deep nesting and ``ValueError`` on an integer of more than 4300 digits, reads
``NaN``/``Infinity`` and ``1e999`` (infinity), keeps the last of two equal member names, and
returns lone UTF-16 surrogates (``"\\ud800"``) as strings that no database or encoder takes.

Here: UTF-8 only, no BOM; nesting at most :data:`MAX_DEPTH`; integers within ±(2**53 - 1) (I-JSON's
interoperable range); finite numbers only; no duplicate member names; strings (and member names)
of Unicode scalar values without U+0000 (PostgreSQL text cannot hold it). Every refusal is an
``InvalidInput`` naming what is wrong and, where there is one, the member (``field``).

Pure: no HTTP. Built on the stdlib parser and its hooks, not a parser of its own.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any, Final, NoReturn

from keybroker.errors import InvalidInput

#: Deepest nesting of arrays and objects. Our documents nest at most 5 levels.
MAX_DEPTH: Final = 32
#: I-JSON (RFC 7493 §2.2): integers beyond this are not exchanged exactly between implementations.
MAX_SAFE_INTEGER: Final = 2**53 - 1
_MAX_INT_DIGITS: Final = len(str(MAX_SAFE_INTEGER))
_BOM: Final = b"\xef\xbb\xbf"


class _Refused(Exception):
    """Raised from the parser's hooks; carries the refusal out of ``json.loads``."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


def _int(text: str) -> int:
    digits = text.lstrip("-")
    if len(digits) > _MAX_INT_DIGITS or int(digits) > MAX_SAFE_INTEGER:
        shown = text if len(text) <= 24 else f"{text[:12]}…({len(digits)} digits)"
        raise _Refused(f"the integer {shown} is outside ±(2**53 - 1), the range JSON peers agree on")
    return int(text)


def _float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        shown = text if len(text) <= 24 else text[:24] + "…"
        raise _Refused(f"the number {shown} is too large for a 64-bit float")
    return value


def _constant(name: str) -> Any:
    raise _Refused(f"{name} is not a JSON number")


def _pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise _Refused(f"the member name {_show(key)} appears twice in one object")
            seen.add(key)
    return obj


def _show(text: str) -> str:
    return ascii(text if len(text) <= 40 else text[:40] + "…")


def _path(parts: tuple[str | int, ...], base: str | None, empty: str) -> str:
    joined = ".".join(str(p) for p in ((base, *parts) if base else parts))
    return joined or empty


def _bad_string(value: str) -> str | None:
    # str methods, not a regular expression: a character class runs ~30 ns a character, and a
    # quote's base64 is tens of kilobytes
    if "\x00" in value:
        return "contains U+0000 (NUL), which is not accepted"
    if value.isascii():
        return None
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:  # only surrogates fail: a str holds nothing else UTF-8 cannot
        return f"contains a lone UTF-16 surrogate (\\u{ord(value[exc.start]):04x}), which is not a Unicode character"
    return None


def _check_tree(doc: Any, what: str, field: str | None, *, strings: bool) -> None:
    """Depth, and the strings when ``strings`` (the text has an escape that may hide a bad one),
    iteratively (the document may be as deep as the C parser allowed). Paths are not tracked on
    this pass, which runs on every body: a refusal walks again to name the member."""
    nested = _NESTED if strings else _CONTAINERS
    if type(doc) not in nested:
        return
    stack: list[tuple[Any, int]] = [(doc, 0)]
    while stack:
        value, depth = stack.pop()
        kind = type(value)
        if kind is str:
            if _bad_string(value) is not None:
                _refuse_at(doc, what, field)
            continue
        if depth >= MAX_DEPTH:
            raise InvalidInput(
                f"{what} nests arrays and objects deeper than {MAX_DEPTH} levels", field=field or "body"
            )
        if kind is dict:
            if strings and any(_bad_string(key) is not None for key in value):
                _refuse_at(doc, what, field)
            stack.extend((item, depth + 1) for item in value.values() if type(item) in nested)
        else:
            stack.extend((item, depth + 1) for item in value if type(item) in nested)


_CONTAINERS: Final = frozenset({dict, list})
_NESTED: Final = frozenset({str, dict, list})
#: In UTF-8 text, NUL and lone surrogates can reach a parsed string only through these escapes
#: (raw control characters are a JSON error; raw surrogates are not UTF-8).
_SUSPECT_ESCAPE: Final = re.compile(r"\\u(?:0000|[dD][89a-fA-F][0-9a-fA-F]{2})")


def _refuse_at(doc: Any, what: str, field: str | None) -> NoReturn:
    """Raise for the first bad string or member name of ``doc``, naming where it is."""
    stack: list[tuple[Any, tuple[str | int, ...]]] = [(doc, ())]
    while stack:
        value, path = stack.pop()
        if isinstance(value, str):
            problem = _bad_string(value)
            if problem is not None:
                raise InvalidInput(f"{_path(path, field, what)}: {problem}", field=_path(path, field, "body"))
        elif isinstance(value, dict):
            for key in value:
                problem = _bad_string(key)
                if problem is not None:
                    raise InvalidInput(
                        f"{_path(path, field, what)}: the member name {_show(key)} {problem}",
                        field=_path(path, field, "body"),
                    )
            stack.extend((item, (*path, key)) for key, item in reversed(value.items()))
        elif isinstance(value, list):
            stack.extend((item, (*path, i)) for i, item in reversed(list(enumerate(value))))
    raise AssertionError("_refuse_at found nothing to refuse")  # pragma: no cover


def loads(raw: bytes | str, *, what: str = "the request body", field: str | None = None) -> Any:
    """Parse ``raw`` (UTF-8 bytes, or text) as strict JSON.

    ``what`` names the document in messages; ``field`` is the member that held it, for JSON carried
    in a string of another document (None: the request body itself).
    """
    at = field or "body"
    if isinstance(raw, bytes):
        if raw.startswith(_BOM):
            raise InvalidInput(f"{what} starts with a byte order mark; send UTF-8 JSON without one", field=at)
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InvalidInput(
                f"{what} is not valid UTF-8 (byte 0x{raw[exc.start]:02x} at offset {exc.start})", field=at
            ) from None
    else:
        text = raw
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise InvalidInput(
                f"{what} holds a lone UTF-16 surrogate (\\u{ord(text[exc.start]):04x}) at offset {exc.start}",
                field=at,
            ) from None
    try:
        doc = json.loads(
            text, object_pairs_hook=_pairs, parse_int=_int, parse_float=_float, parse_constant=_constant
        )
    except _Refused as exc:
        raise InvalidInput(f"{what}: {exc.detail}", field=at) from None
    except json.JSONDecodeError as exc:
        raise InvalidInput(
            f"{what} is not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})", field=at
        ) from None
    except RecursionError:
        # the C parser's own guard, long before the stack is at risk
        raise InvalidInput(
            f"{what} nests arrays and objects deeper than {MAX_DEPTH} levels", field=at
        ) from None
    strings = _SUSPECT_ESCAPE.search(text) is not None
    # fewer brackets than levels allowed (most bodies): nothing to walk for depth
    if strings or text.count("[") + text.count("{") > MAX_DEPTH:
        _check_tree(doc, what, field, strings=strings)
    return doc
