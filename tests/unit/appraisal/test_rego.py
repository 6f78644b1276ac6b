"""Rego policies through regopy: allow/deny/reasons, store-time validation, errors never escape."""

from __future__ import annotations

import copy
import threading
from typing import Any

import pytest
from tests.helpers.sim_evidence import SimEvidence

from keybroker.appraisal import rego
from keybroker.appraisal.input import appraisal_input
from keybroker.errors import InvalidInput
from keybroker.tee.sim import DEFAULT_MRENCLAVE

SGX_POLICY = f"""# SGX enclave by measurement, simulated evidence accepted for tests
package keybroker

import rego.v1

default allow := false

allow if {{
    input.tee == "sgx"
    input.claims.mr_enclave == "{DEFAULT_MRENCLAVE.hex()}"
    input.claims.isv_svn >= 1
    not input.claims.debug
}}

reasons contains sprintf("isv_svn %d is below 1", [input.claims.isv_svn]) if input.claims.isv_svn < 1

reasons contains "debug enclave" if input.claims.debug

notes contains sprintf("TCB status %s", [input.tcb.status]) if input.tcb.status != "UpToDate"
"""


def doc(sim: SimEvidence, tee: str = "sgx", **quote: Any) -> dict[str, Any]:
    return dict(appraisal_input(sim.verify(tee, **quote), client_permissions=None))  # type: ignore[arg-type]


def test_allow(sim: SimEvidence) -> None:
    policy = rego.compile_policy(SGX_POLICY, policy_id="r-1")
    d = rego.evaluate(policy, doc(sim, isvsvn=1))
    assert d.allowed, d.reasons
    assert d.reasons == () and d.notes == ()
    assert d.policy_id == "r-1"
    assert d.ear_status == "warning"  # simulated
    assert d.trust_vector.executables == 2


def test_deny_with_reasons_and_notes(sim: SimEvidence) -> None:
    policy = rego.compile_policy(SGX_POLICY)
    d = rego.evaluate(policy, doc(sim, isvsvn=0, debug=True, tcb="outofdate"), policy_id="override")
    assert not d.allowed
    assert d.reasons == ("debug enclave", "isv_svn 0 is below 1")
    assert d.notes == ("TCB status OutOfDate",)
    assert d.policy_id == "override"
    assert d.ear_status == "contraindicated"


def test_deny_without_reasons_says_allow_is_false(sim: SimEvidence) -> None:
    policy = rego.compile_policy(SGX_POLICY)
    d = rego.evaluate(policy, doc(sim, "tdx"))
    assert d.reasons == ("allow is false, not true",)


def test_same_policy_different_inputs_do_not_leak(sim: SimEvidence) -> None:
    policy = rego.compile_policy(SGX_POLICY)
    good, bad = doc(sim, isvsvn=2), doc(sim, isvsvn=0)
    results = [rego.evaluate(policy, d).allowed for d in (good, bad, good, bad)]
    assert results == [True, False, True, False]


def test_concurrent_evaluations(sim: SimEvidence) -> None:
    policy = rego.compile_policy(SGX_POLICY)
    good, bad = doc(sim, isvsvn=2), doc(sim, isvsvn=0)
    errors: list[str] = []

    def worker(d: dict[str, Any], expected: bool) -> None:
        for _ in range(30):
            if rego.evaluate(policy, d).allowed is not expected:
                errors.append("wrong result")

    threads = [threading.Thread(target=worker, args=(d, e)) for d, e in [(good, True), (bad, False)] * 3]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


@pytest.mark.parametrize(
    ("src", "reason"),
    [
        ('package keybroker\nallow := "yes"\n', 'allow is "yes", not true'),
        ("package keybroker\nallow := 1\n", "allow is 1, not true"),
        ("package keybroker\nallow if input.nothing\n", "allow is undefined for this input (default deny)"),
        (
            'package keybroker\nallow := true\nreasons := ["but no"]\n',
            "the policy set allow but also gave reasons",
        ),
        (
            "package keybroker\nallow := false\nreasons := [1, 2]\n",
            "the policy's reasons is not a set or array of strings and {message, expected, check} objects",
        ),
        (
            'package keybroker\nallow := true\nnotes := "text"\n',
            "the policy's notes is not a set or array of strings",
        ),
    ],
)
def test_only_exactly_true_allows(sim: SimEvidence, src: str, reason: str) -> None:
    d = rego.evaluate(rego.compile_policy(src), doc(sim))
    assert not d.allowed
    assert reason in d.reasons


def test_runtime_error_denies(sim: SimEvidence) -> None:
    policy = rego.compile_policy("package keybroker\nallow if { 10 / input.claims.isv_svn > 1 }\n")
    assert rego.evaluate(policy, doc(sim, isvsvn=2)).allowed
    d = rego.evaluate(policy, doc(sim, isvsvn=0))
    assert not d.allowed
    assert d.reasons == ("the Rego policy failed: divide by zero",)


def test_input_dependent_conflict_denies(sim: SimEvidence) -> None:
    src = 'package keybroker\nallow := true if input.sim\nallow := false if input.tee == "sgx"\n'
    d = rego.evaluate(rego.compile_policy(src), doc(sim))
    assert not d.allowed
    assert d.reasons == ("the Rego policy failed: complete rules must not produce multiple outputs",)


def test_builtin_error_is_an_error_not_undefined(sim: SimEvidence) -> None:
    policy = rego.compile_policy("package keybroker\nallow if { to_number(input.tee) > 0 }\n")
    assert rego.evaluate(policy, doc(sim)).reasons[0].startswith("the Rego policy failed: ")


def test_unencodable_input_denies() -> None:
    policy = rego.compile_policy("package keybroker\nallow := true\n")
    d = rego.evaluate(policy, {"tee": "sgx", "claims": {"x": b"bytes"}})
    assert not d.allowed
    assert d.reasons[0].startswith("the input document cannot be encoded as JSON")


def test_allow_without_input_facts_still_needs_a_document() -> None:
    policy = rego.compile_policy("package keybroker\nallow := true\n")
    d = rego.evaluate(policy, {})
    assert d.allowed  # the policy allows anything; the EAR must not claim more than it knows
    assert d.ear_status == "warning"
    assert d.trust_vector.to_dict() == dict.fromkeys(d.trust_vector.to_dict(), 0)


def test_syntax_error_names_the_line(capfd: pytest.CaptureFixture[str]) -> None:
    src = "package keybroker\n# héllo\nallow if {\n  input.tee == \n}\n"
    with pytest.raises(InvalidInput) as info:
        rego.compile_policy(src)
    assert str(info.value) == "Rego policy line 4, column 13: Invalid boolean operator"
    assert info.value.extra == {"field": "policy", "line": 4, "column": 13}
    out, err = capfd.readouterr()
    assert out == "" and err == ""  # rego-cpp's own error printing is silenced


@pytest.mark.parametrize(
    ("src", "message"),
    [
        ("package other\nallow := true\n", "Rego policy must start with 'package keybroker'"),
        ("package keybroker.sub\nallow := true\n", "Rego policy must start with 'package keybroker'"),
        ("allow := true\n", "Rego policy must start with 'package keybroker'"),
        ("", "Rego policy must start with 'package keybroker'"),
        ("package keybroker\nok := true\n", "Rego policy must define an 'allow' rule"),
        (
            "package keybroker\nallow if foo.bar(1)\n",
            "Rego policy fails on an empty input: Function not found: foo.bar",
        ),
        (
            "package keybroker\nallow if { a }\na if { allow }\n",
            "Rego policy fails on an empty input: Recursion detected in rule body: data.keybroker.allow",
        ),
        (
            "package keybroker\nallow := true\nallow := false\n",
            "Rego policy fails on an empty input: complete rules must not produce multiple outputs",
        ),
    ],
)
def test_store_time_validation(src: str, message: str) -> None:
    with pytest.raises(InvalidInput) as info:
        rego.compile_policy(src)
    assert str(info.value) == message


def test_package_line_may_follow_comments() -> None:
    assert rego.compile_policy("# a comment\n\npackage keybroker\nallow := true\n")


@pytest.mark.parametrize(
    ("expr", "builtin"),
    [
        ("opa.runtime()", "opa.runtime"),
        ('opa["runtime"]()', "opa.runtime"),
        ("opa. # split by a comment\n  runtime()", "opa.runtime"),
        ("time.now_ns()", "time.now_ns"),
        ('rand.intn("k", 10)', "rand.intn"),
        ('uuid.rfc4122("k")', "uuid.rfc4122"),
    ],
)
def test_ambient_builtins_are_refused(expr: str, builtin: str) -> None:
    src = f"package keybroker\nallow := true\nleak := {expr}\n"
    with pytest.raises(InvalidInput) as info:
        rego.compile_policy(src)
    assert str(info.value) == (
        f"Rego policy uses {builtin}, which keybroker does not allow "
        "(their results depend on the host, not on the input document)"
    )


def test_environment_cannot_reach_reasons(sim: SimEvidence, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KEYBROKER_TEST_SECRET", "s3cr3t")
    src = 'package keybroker\ndefault allow := false\nreasons contains sprintf("%v", [opa.runtime().env])\n'
    with pytest.raises(InvalidInput):
        rego.compile_policy(src)


def test_policy_size_limit() -> None:
    src = "package keybroker\nallow := true\n" + "# pad\n" * (rego.MAX_POLICY_BYTES // 6)
    with pytest.raises(InvalidInput) as info:
        rego.compile_policy(src)
    assert "larger than" in str(info.value)


def test_long_and_many_reasons_are_capped(sim: SimEvidence) -> None:
    src = (
        "package keybroker\nimport rego.v1\ndefault allow := false\n"
        'long := concat("", ["a" | some _ in numbers.range(1, 2000)])\n'
        'reasons contains concat(" ", [sprintf("r%03d", [i]), long]) if some i in numbers.range(1, 100)\n'
    )
    d = rego.evaluate(rego.compile_policy(src), doc(sim))
    assert len(d.reasons) == 65
    assert d.reasons[-1] == "... and 36 more reasons"
    assert all(len(r) <= 1024 for r in d.reasons)


def test_policies_see_the_same_document_as_secl(sim: SimEvidence) -> None:
    src = (
        "package keybroker\nimport rego.v1\n"
        "allow if {\n"
        '    input.tee == "tdx"\n'
        "    input.sim == true\n"
        '    input.client_permissions == ["USA", "nginx"]\n'
        '    input.tcb.status == "SWHardeningNeeded"\n'
        '    input.tcb.advisory_ids == ["DEV-SA-00101"]\n'
        "    input.claims.sept_ve_disable\n"
        "}\n"
    )
    d = dict(appraisal_input(sim.verify("tdx", tcb="swhardening"), client_permissions=["nginx", "USA"]))
    assert rego.evaluate(rego.compile_policy(src), d).allowed
    other = copy.deepcopy(d)
    other["client_permissions"] = None
    assert not rego.evaluate(rego.compile_policy(src), other).allowed


def test_reason_objects_keep_expected_values_out_of_the_public_form(sim: SimEvidence) -> None:
    src = f"""package keybroker
import rego.v1
default allow := false
expected := "{DEFAULT_MRENCLAVE.hex()}"
allow if input.claims.mr_enclave == expected
reasons contains {{
    "check": "mrenclave",
    "message": sprintf("mrenclave %s is not allowed", [input.claims.mr_enclave]),
    "expected": [expected, "ab"],
}} if input.claims.mr_enclave != expected
reasons contains "written for everyone" if input.claims.mr_enclave != expected
"""
    d = rego.evaluate(rego.compile_policy(src), doc(sim, mrenclave=bytes(32)))
    assert not d.allowed
    mrenclave = next(f for f in d.findings if f.check == "mrenclave")
    assert mrenclave.public == f"mrenclave {'00' * 32} is not allowed"
    assert mrenclave.text == f"{mrenclave.public} (expected {DEFAULT_MRENCLAVE.hex()}, ab)"
    assert DEFAULT_MRENCLAVE.hex() not in " ".join(d.public_reasons)
    assert "written for everyone" in d.public_reasons and "written for everyone" in d.reasons


@pytest.mark.parametrize(
    "item",
    ['{"message": 1}', '{"message": "m", "other": 1}', '{"expected": "x"}', '{"message": "m", "check": 2}'],
)
def test_malformed_reason_objects_deny_with_a_reason(sim: SimEvidence, item: str) -> None:
    d = rego.evaluate(
        rego.compile_policy(f"package keybroker\nallow := false\nreasons := [{item}]\n"), doc(sim)
    )
    assert not d.allowed
    assert "the policy's reasons is not a set or array of strings and {message, expected, check} objects" in (
        d.reasons
    )
