"""The strict JSON reader on its own (the API tests send the same attacks over HTTP)."""

from __future__ import annotations

import pytest

from keybroker import strictjson
from keybroker.errors import InvalidInput


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ('{"a": [1, -2, 3.5, true, null, "x"]}', {"a": [1, -2, 3.5, True, None, "x"]}),
        ("9007199254740991", 9007199254740991),
        ("-9007199254740991", -9007199254740991),
        ('"\\ud83d\\ude00"', "\U0001f600"),
        ("[" * 32 + "]" * 32, [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]),
    ],
)
def test_strict_reader_accepts_ordinary_json(text: str, value: object) -> None:
    assert strictjson.loads(text.encode()) == value


def test_strict_reader_names_the_nested_member() -> None:
    with pytest.raises(InvalidInput) as exc:
        strictjson.loads(b'{"a": {"b": ["ok", "\\udfff"]}}')
    assert exc.value.field == "a.b.1"
    assert exc.value.detail == (
        "a.b.1: contains a lone UTF-16 surrogate (\\udfff), which is not a Unicode character"
    )


def test_text_input_with_a_raw_surrogate_is_refused() -> None:
    """JSON carried in a string of another document is text: it may hold a raw surrogate."""
    with pytest.raises(InvalidInput) as exc:
        strictjson.loads('{"a": "\ud800"}', what="tee-evidence", field="tee-evidence")
    assert exc.value.field == "tee-evidence"
    assert exc.value.detail == "tee-evidence holds a lone UTF-16 surrogate (\\ud800) at offset 7"


def test_nested_documents_are_named_by_their_field() -> None:
    with pytest.raises(InvalidInput) as exc:
        strictjson.loads('{"x": {"y": "\\u0000"}}', what="extra-params", field="extra-params")
    assert exc.value.field == "extra-params.x.y"
    assert exc.value.detail == "extra-params.x.y: contains U+0000 (NUL), which is not accepted"
    with pytest.raises(InvalidInput) as exc:
        strictjson.loads("[" * 33 + "]" * 33, what="extra-params", field="extra-params")
    assert exc.value.field == "extra-params"
    assert exc.value.detail == "extra-params nests arrays and objects deeper than 32 levels"


@pytest.mark.parametrize(
    ("text", "detail"),
    [
        (
            '{"a": 1, "b": {"c": 2, "c": 3}}',
            "the request body: the member name 'c' appears twice in one object",
        ),
        (
            "-9007199254740992",
            "the request body: the integer -9007199254740992 is outside ±(2**53 - 1), the range JSON peers agree on",
        ),
        ("[Infinity]", "the request body: Infinity is not a JSON number"),
        ("[-1e999]", "the request body: the number -1e999 is too large for a 64-bit float"),
        (
            '"\\ud83d"',
            "the request body: contains a lone UTF-16 surrogate (\\ud83d), which is not a Unicode character",
        ),
        ('"\\\\ud800"', None),  # an escaped backslash, then the letters ud800: a fine string
    ],
)
def test_refusals_state_the_fact(text: str, detail: str | None) -> None:
    if detail is None:
        assert strictjson.loads(text.encode()) == "\\ud800"
        return
    with pytest.raises(InvalidInput) as exc:
        strictjson.loads(text.encode())
    assert exc.value.detail == detail
