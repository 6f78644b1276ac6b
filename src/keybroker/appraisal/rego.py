"""Rego policies (Open Policy Agent's language) evaluated in-process by regopy (rego-cpp).

A policy is one module in ``package keybroker`` over the appraisal input document
(:mod:`keybroker.appraisal.input`) as ``input``. It must define ``allow``; the request is allowed
only if ``allow`` is exactly ``true`` and the policy gives no ``reasons``. Optional rules:
``reasons`` (a set or array of strings, told to every caller, or ``{"message", "expected",
"check"}`` objects, whose ``expected`` only the audit log and entitled callers see) and ``notes``
(strings). Deny by default: an undefined ``allow``, an evaluation error or malformed output denies
with a reason; no exception leaves :func:`evaluate`.

Hardening around rego-cpp (found by testing regopy 1.5.2; regression tests in
``tests/unit/appraisal/test_rego.py``):

* ``opa.runtime()`` returns the service's environment variables, which a policy could copy into
  its ``reasons`` and so into a 403 answer. Builtins with ambient inputs (``opa.runtime``,
  ``time.now_ns``, ``rand.intn``, ``uuid.rfc4122``, ``http.send``, ``net.lookup_ip_addr``) are
  refused at compile time by reading the compiled plan's builtin table, which also catches
  ``opa["runtime"]()`` and references split by comments. A self-test at first use proves the
  table is readable; if it is not, every Rego policy is refused.
* Builtin errors (``1/0``, ``to_number("x")``) are errors, not silently undefined
  (``strict_built_in_errors``); unknown functions and recursion only surface at query time, so
  :func:`compile_policy` also evaluates the policy once on an empty input and rejects errors.
* regopy's ``Output`` wrapper crashes the process on some outputs (``Output.binding`` on an
  undefined result aborts in C++) and raises ``JSONDecodeError`` on others, so this module uses
  regopy's ctypes layer (``regopy.rego_shared``) directly and parses the JSON itself.
* rego-cpp logs errors to stdout unless its log level is ``NONE``; it is.
* There is no evaluation timeout or memory limit: ``numbers.range(1, 1e9)`` runs until memory
  runs out. Only administrators write policies; keep them small (:data:`MAX_POLICY_BYTES`).
"""

from __future__ import annotations

import json
import re
import threading
import weakref
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, TypeVar

from regopy import LogLevel, RegoError, rego_shared  # type: ignore[import-untyped]

from keybroker.appraisal.decision import Decision, Reason, decide
from keybroker.errors import InvalidInput

__all__ = ["FORBIDDEN_BUILTINS", "MAX_POLICY_BYTES", "RegoPolicy", "compile_policy", "evaluate"]

MAX_POLICY_BYTES: Final = 64 * 1024
#: Builtins whose results depend on the host rather than on the input document.
FORBIDDEN_BUILTINS: Final = frozenset(
    {"opa.runtime", "time.now_ns", "rand.intn", "uuid.rfc4122", "http.send", "net.lookup_ip_addr"}
)
_MAX_ITEMS: Final = 64
_MAX_ITEM_CHARS: Final = 1024
_REASON_KEYS: Final = frozenset({"message", "expected", "check"})
_CHECK: Final = "rego"
_T = TypeVar("_T")
_MODULE_NAME: Final = "policy.rego"
_QUERY: Final = "keybroker_policy_result = data.keybroker"
_NODE_ERROR_MESSAGE: Final = 1801  # rego-cpp NodeKind.ErrorMessage
_PACKAGE: Final = re.compile(r"package[ \t]+keybroker[ \t]*")
_ALLOW_RULE: Final = re.compile(r"^[ \t]*(default[ \t]+)?allow\b", re.MULTILINE)
_ERROR_AT: Final = re.compile(r"\(error \d+:" + re.escape(_MODULE_NAME) + r"\|(\d+)\|(\d+)")
_ERROR_MSG: Final = re.compile(r"\(errormsg (\d+):")


class _PolicyError(Exception):
    """Evaluation failed inside rego-cpp; the message is safe to show."""


def _new_interpreter() -> Any:
    impl = rego_shared.rego_new()
    rego_shared.rego_set_log_level(impl, LogLevel.NONE)
    rego_shared.rego_set_strict_builtin_errors(impl, True)
    return impl


def _walk(node: Any) -> Iterator[tuple[int, Any]]:
    yield rego_shared.rego_node_type(node), node
    for i in range(rego_shared.rego_node_size(node)):
        yield from _walk(rego_shared.rego_node_get(node, i))


def _node_values(node: Any) -> Iterator[str]:
    for _kind, n in _walk(node):
        try:
            yield rego_shared.rego_node_value(n)
        except RegoError:
            continue


def _error_messages(node: Any) -> list[str]:
    return [rego_shared.rego_node_value(n) for kind, n in _walk(node) if kind == _NODE_ERROR_MESSAGE]


def _length_prefixed(text: str, pattern: re.Pattern[str]) -> list[str]:
    """rego-cpp's S-expression strings are ``<len>:<text>``; return every ``text`` after ``pattern``."""
    out = []
    for m in pattern.finditer(text):
        n = int(m.group(1))
        out.append(text[m.end() : m.end() + n])
    return out


def _syntax_error(source: str, exc: RegoError) -> InvalidInput:
    text = str(exc)
    messages = _length_prefixed(text, _ERROR_MSG) or ["invalid module"]
    at = _ERROR_AT.search(text)
    if at is None:
        return InvalidInput(f"Rego policy: {'; '.join(messages)}", field="policy")
    before = source.encode("utf-8")[: int(at.group(1))]
    line = before.count(b"\n") + 1
    column = len(before) - (before.rfind(b"\n") + 1) + 1
    return InvalidInput(
        f"Rego policy line {line}, column {column}: {'; '.join(messages)}",
        field="policy",
        line=line,
        column=column,
    )


class _Engine:
    """A compiled bundle and an interpreter to run it, used under a lock (rego-cpp is stateful)."""

    def __init__(self, source: str) -> None:
        builder = _new_interpreter()
        try:
            rego_shared.rego_add_module(builder, _MODULE_NAME, source)
            rego_shared.rego_set_query(builder, _QUERY)
            self.bundle = rego_shared.rego_build(builder)
        finally:
            rego_shared.rego_free(builder)
        self.runner = _new_interpreter()
        self.lock = threading.Lock()
        weakref.finalize(self, _free, self.bundle, self.runner)

    def builtins_used(self, candidates: frozenset[str]) -> set[str]:
        return {v for v in _node_values(rego_shared.rego_bundle_node(self.bundle)) if v in candidates}

    def query(self, input_json: str) -> object:
        """``data.keybroker`` for ``input_json`` (None if undefined); :class:`_PolicyError` on errors."""
        with self.lock:
            try:
                rego_shared.rego_set_input_term(self.runner, input_json)
                output = rego_shared.rego_bundle_query(self.runner, self.bundle)
            except RegoError as exc:
                raise _PolicyError(f"rego-cpp refused the query ({str(exc).strip()[:200]})") from None
            try:
                if not rego_shared.rego_output_ok(output):
                    messages = _error_messages(rego_shared.rego_output_node(output))
                    raise _PolicyError("; ".join(dict.fromkeys(messages)) or "evaluation error")
                text = rego_shared.rego_output_string(output)
                if text.startswith("(error"):
                    messages = _length_prefixed(text, _ERROR_MSG)
                    raise _PolicyError("; ".join(dict.fromkeys(messages)) or "evaluation error")
            finally:
                rego_shared.rego_free_output(output)
        if text == "undefined":
            return None
        try:
            result = json.loads(text)
        except ValueError:
            raise _PolicyError("rego-cpp returned output that is not JSON") from None
        bindings = result.get("bindings") if isinstance(result, dict) else None
        return bindings.get("keybroker_policy_result") if isinstance(bindings, dict) else None


def _free(bundle: Any, runner: Any) -> None:
    rego_shared.rego_free_bundle(bundle)
    rego_shared.rego_free(runner)


@dataclass(frozen=True, eq=False)
class RegoPolicy:
    """A validated Rego policy, ready to evaluate. Thread-safe (evaluations are serialized)."""

    source: str
    policy_id: str
    _engine: _Engine = field(repr=False)


_self_test_lock = threading.Lock()
_self_test_result: bool | None = None


def _builtin_table_readable() -> bool:
    """Prove that :meth:`_Engine.builtins_used` sees a builtin hidden behind index syntax."""
    global _self_test_result
    with _self_test_lock:
        if _self_test_result is None:
            probe = 'package keybroker\nallow := false\nx := opa["runtime"]()\n'
            try:
                found = _Engine(probe).builtins_used(FORBIDDEN_BUILTINS)
            except RegoError:
                found = set()
            _self_test_result = found == {"opa.runtime"}
        return _self_test_result


def _first_statement(source: str) -> str:
    for line in source.splitlines():
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            return stripped
    return ""


def compile_policy(source: str, *, policy_id: str = "rego") -> RegoPolicy:
    """Validate and compile ``source`` (at store time); :class:`InvalidInput` says what is wrong."""
    if len(source.encode("utf-8")) > MAX_POLICY_BYTES:
        raise InvalidInput(f"Rego policy is larger than {MAX_POLICY_BYTES} bytes", field="policy")
    if not _PACKAGE.fullmatch(_first_statement(source)):
        raise InvalidInput("Rego policy must start with 'package keybroker'", field="policy")
    if not _ALLOW_RULE.search(source):
        raise InvalidInput("Rego policy must define an 'allow' rule", field="policy")
    try:
        engine = _Engine(source)
    except RegoError as exc:
        raise _syntax_error(source, exc) from None
    if not _builtin_table_readable():
        raise InvalidInput(
            "Rego policies are disabled: this regopy build's compiled plan cannot be inspected "
            "for forbidden builtins",
            field="policy",
        )
    forbidden = engine.builtins_used(FORBIDDEN_BUILTINS)
    if forbidden:
        raise InvalidInput(
            f"Rego policy uses {', '.join(sorted(forbidden))}, which keybroker does not allow "
            "(their results depend on the host, not on the input document)",
            field="policy",
        )
    try:
        engine.query("{}")
    except _PolicyError as exc:
        raise InvalidInput(f"Rego policy fails on an empty input: {exc}", field="policy") from None
    return RegoPolicy(source=source, policy_id=policy_id, _engine=engine)


def _cap(text: str) -> str:
    return text if len(text) <= _MAX_ITEM_CHARS else text[: _MAX_ITEM_CHARS - 1] + "…"


def _capped(items: list[_T], name: str, more: Callable[[str], _T]) -> list[_T]:
    if len(items) > _MAX_ITEMS:
        return [*items[:_MAX_ITEMS], more(f"... and {len(items) - _MAX_ITEMS} more {name}")]
    return items


def _strings(value: object, name: str, problems: list[str]) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        problems.append(f"the policy's {name} is not a set or array of strings")
        return []
    return _capped([_cap(v) for v in value], name, str)


def _shown(value: object) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        return ", ".join(_shown(v) for v in value)
    return json.dumps(value, sort_keys=True)


def _reason(item: object) -> Reason | None:
    """A string (told to everyone) or ``{"message", "expected"?, "check"?}`` (``expected`` told
    only in the full explanation); None if it is neither."""
    if isinstance(item, str):
        return Reason.plain(_cap(item), _CHECK)
    if not isinstance(item, dict) or not set(item) <= _REASON_KEYS:
        return None
    message, check = item.get("message"), item.get("check", _CHECK)
    if not isinstance(message, str) or not isinstance(check, str):
        return None
    message, check = _cap(message), _cap(check)
    if "expected" not in item:
        return Reason.plain(message, check)
    expected = _cap(_shown(item["expected"]))
    return Reason(check=check, text=f"{message} (expected {expected})", public=message, expected=expected)


def _reasons(value: object, problems: list[str]) -> list[Reason]:
    if value is None:
        return []
    reasons = [_reason(v) for v in value] if isinstance(value, list) else [None]
    if any(r is None for r in reasons):
        problems.append(
            "the policy's reasons is not a set or array of strings and {message, expected, check} objects"
        )
        return []
    return _capped([r for r in reasons if r is not None], "reasons", Reason.plain)


def evaluate(policy: RegoPolicy, doc: Mapping[str, Any], *, policy_id: str | None = None) -> Decision:
    """Evaluate ``policy`` on an appraisal input document. Never raises: problems deny."""
    pid = policy_id if policy_id is not None else policy.policy_id

    def deny(reason: str) -> Decision:
        return decide(doc, allowed=False, reasons=[reason], policy_id=pid, executables="unchecked")

    try:
        input_json = json.dumps(doc, sort_keys=True, allow_nan=False)
    except (TypeError, ValueError) as exc:
        return deny(f"the input document cannot be encoded as JSON ({exc})")
    try:
        result = policy._engine.query(input_json)
    except _PolicyError as exc:
        return deny(f"the Rego policy failed: {exc}")
    if result is None:
        return deny("the Rego policy produced no data.keybroker document")
    if not isinstance(result, dict):
        return deny("data.keybroker is not an object")
    problems: list[str] = []
    reasons = _reasons(result.get("reasons"), problems)
    notes = _strings(result.get("notes"), "notes", problems)
    allow = result.get("allow")
    if allow is True:
        if reasons:
            problems.append("the policy set allow but also gave reasons")
    elif not reasons:
        problems.append(
            f"allow is {json.dumps(allow)}, not true"
            if "allow" in result
            else "allow is undefined for this input (default deny)"
        )
    return decide(
        doc,
        allowed=allow is True and not problems,
        reasons=[*reasons, *problems],
        notes=notes,
        policy_id=pid,
        executables="approved" if allow is True else "unchecked",
    )
