"""RFC 8785 (JSON Canonicalization Scheme): the bytes ``rfc8785.dumps`` gives, at C speed for the
documents the request path hashes (each audit record, the verified claims).

``rfc8785`` serializes in Python (about 0.2 ms for an audit record); ``json.dumps`` with sorted keys,
no whitespace and no ASCII escaping writes the same bytes for a document made only of dicts with
ASCII string keys, lists, tuples, strings, booleans, None and integers within ±(2**53 - 1): both
escape exactly ``"``, ``\\`` and U+0000-U+001F (the same short forms, else ``\\u00xx`` in lower
case), keep every other character as it is, and for ASCII keys sort by UTF-16 code units and by
code points alike. Anything else (floats, larger integers, non-ASCII keys, subclasses, lone
surrogates, other types) goes to ``rfc8785`` itself, which serializes or refuses it as it always
did. ``tests/unit/test_jcs.py`` holds the two to the same bytes on generated documents.

Pure: no HTTP, database or settings.
"""

from __future__ import annotations

import json
from typing import Any, Final

import rfc8785

#: RFC 8785 3.2.2.3 / I-JSON: the integers an IEEE 754 double holds exactly (rfc8785's bounds).
_INT_MAX: Final = 2**53 - 1
_INT_MIN: Final = -(2**53) + 1
_SCALARS: Final = frozenset({str, bool, type(None)})
_SEQUENCES: Final = frozenset({list, tuple})


def _plain(doc: Any) -> bool:
    """Whether ``json.dumps`` writes ``doc`` exactly as RFC 8785 does (see the module docstring)."""
    stack = [doc]
    while stack:
        value = stack.pop()
        kind = type(value)
        if kind in _SCALARS:
            continue
        if kind is int:
            if not _INT_MIN <= value <= _INT_MAX:
                return False
        elif kind is dict:
            for key in value:
                if type(key) is not str or not key.isascii():
                    return False
            stack.extend(value.values())
        elif kind in _SEQUENCES:
            stack.extend(value)
        else:
            return False
    return True


def dumps(doc: Any) -> bytes:
    """The JCS serialization of ``doc`` (UTF-8), as ``rfc8785.dumps``; its errors too."""
    if _plain(doc):
        text = json.dumps(doc, ensure_ascii=False, sort_keys=True, separators=(",", ":"), allow_nan=False)
        try:
            return text.encode("utf-8")
        except UnicodeEncodeError:
            pass  # a lone surrogate: rfc8785 refuses it
    return rfc8785.dumps(doc)
