"""``keybroker evidence verify`` (the typer sub-app, through CliRunner)."""

from __future__ import annotations

import base64
import datetime as dt
import json
from pathlib import Path

import pytest
from tests.vectors.corpus import path, read_bytes, read_text
from typer.testing import CliRunner

from keybroker.cli import evidence
from keybroker.cli.evidence import UsageError, app, decode_quote, parse_at, verify_command
from keybroker.errors import CollateralError
from keybroker.tee.dcap.endorsements import QuoteCollateral
from keybroker.tee.sim import DevPki, tdx_quote

TDX = str(path("intel-dcap/phala-dcap-qvl/tdx_quote"))
TDX_COLL = str(path("intel-dcap/phala-dcap-qvl/tdx_quote_collateral.json"))
AT = "2025-07-04T10:16:31Z"
runner = CliRunner()


def _run(*args: str) -> tuple[int, str]:
    result = runner.invoke(app, ["verify", *args])
    return result.exit_code, result.output


def test_verified_human_output() -> None:
    code, out = _run("--quote", TDX, "--collateral", TDX_COLL, "--at", AT)
    assert code == 0, out
    assert "VERIFIED" in out and "UpToDate" in out and "B0C06F000000" in out
    assert "tcb_status" in out and "mr_td" in out


def test_verified_json_output() -> None:
    code, out = _run("--quote", TDX, "--collateral", TDX_COLL, "--at", "1751624191", "--json")
    assert code == 0
    doc = json.loads(out)
    assert doc["verdict"] == "verified" and doc["status"] == "UpToDate" and doc["tee"] == "tdx"
    assert doc["claims"]["sept_ve_disable"] is True and doc["checks"][-1] == "tcb_status"
    assert doc["at"] == "2025-07-04T10:16:31+00:00"


def test_rejected_names_the_failed_check() -> None:
    code, out = _run(
        "--quote", str(path("tampered/tdx_quote.mrtd_flip")), "--collateral", TDX_COLL, "--at", AT
    )
    assert code == 1
    assert "REJECTED" in out and "quote_signature" in out
    code, out = _run("--quote", TDX, "--collateral", TDX_COLL, "--at", "2026-11-26T00:00:00Z", "--json")
    doc = json.loads(out)
    assert code == 1 and doc["failed_check"] == "validity_window" and "expired" in doc["reason"]
    assert doc["checks_passed"][-1] == "pck_crl"


def test_truncated_quote_is_rejected_at_parse() -> None:
    code, out = _run(
        "--quote", str(path("tampered/tdx_quote.truncated")), "--collateral", TDX_COLL, "--at", AT, "--json"
    )
    doc = json.loads(out)
    assert code == 1 and doc["failed_check"] == "parse" and doc["offset"] == 636


@pytest.mark.parametrize(
    "encode", [lambda b: b.hex().encode(), lambda b: base64.b64encode(b) + b"\n", base64.urlsafe_b64encode]
)
def test_hex_and_base64_quotes(tmp_path: Path, encode: object) -> None:
    f = tmp_path / "quote.txt"
    f.write_bytes(encode(read_bytes("intel-dcap/phala-dcap-qvl/tdx_quote")))  # type: ignore[operator]
    code, out = _run("--quote", str(f), "--collateral", TDX_COLL, "--at", AT)
    assert code == 0, out


def test_corpus_hex_file() -> None:
    code, _ = _run(
        "--quote", str(path("intel-dcap/phala-dcap-qvl/tdx-quote.hex")), "--collateral", TDX_COLL, "--at", AT
    )
    assert code in (0, 1)  # decodes (hex) and is verified or rejected, never a usage error


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--quote", "/nonexistent/q", "--collateral", TDX_COLL, "--at", AT], "cannot read evidence"),
        (["--quote", TDX, "--collateral", TDX_COLL, "--at", "yesterday"], "neither ISO 8601"),
        (["--quote", TDX, "--collateral", TDX_COLL, "--at", "2025-07-04T10:16:31"], "no timezone"),
        (["--quote", TDX, "--at", AT, "--data-dir", "/nonexistent-keybroker"], "no collateral store"),
        (["--quote", TDX_COLL, "--collateral", TDX_COLL, "--at", AT], "raw, hex or base64"),
        (["--quote", TDX, "--collateral", TDX, "--at", AT], "collateral"),
        (["--quote", TDX, "--collateral", TDX_COLL, "--at", AT, "--trust-root", TDX_COLL], "trust root"),
    ],
)
def test_usage_errors(args: list[str], message: str) -> None:
    code, out = _run(*args)
    assert code == 2
    assert message in out


def test_decode_quote_is_strict() -> None:
    raw = read_bytes("intel-dcap/phala-dcap-qvl/sgx_quote")
    assert decode_quote(raw) == raw
    assert decode_quote(b"  " + raw.hex().upper().encode() + b"\n") == raw
    assert decode_quote(b"0x" + raw.hex().encode()) == raw
    for bad in (
        raw.hex().encode()[:-1],
        b"AAAA",
        b"hello world",
        base64.b64encode(b"\x01\x00\x02\x00" + raw[4:]),
    ):
        with pytest.raises(UsageError):
            decode_quote(bad)


def test_parse_at() -> None:
    assert parse_at("1751624191") == dt.datetime(2025, 7, 4, 10, 16, 31, tzinfo=dt.UTC)
    assert parse_at("2025-07-04T12:16:31+02:00") == dt.datetime(2025, 7, 4, 10, 16, 31, tzinfo=dt.UTC)


def test_collateral_lookup_hook() -> None:
    coll = QuoteCollateral.from_json(read_text("intel-dcap/phala-dcap-qvl/tdx_quote_collateral.json"))
    seen: list[tuple[bytes, str, str]] = []

    def lookup(fmspc: bytes, ca: str, tee: str) -> QuoteCollateral:
        seen.append((fmspc, ca, tee))
        return coll

    at = parse_at(AT)
    result = verify_command(
        read_bytes("intel-dcap/phala-dcap-qvl/tdx_quote"), collateral=None, at=at, collateral_lookup=lookup
    )
    assert result.status == "UpToDate"
    assert seen == [(bytes.fromhex("B0C06F000000"), "platform", "tdx")]

    def missing(fmspc: bytes, ca: str, tee: str) -> QuoteCollateral:
        raise CollateralError(f"no collateral for {fmspc.hex()}")

    evidence.set_collateral_lookup(missing)
    try:
        code, out = _run("--quote", TDX, "--at", AT)
        assert code == 2 and "no collateral for b0c06f000000" in out
    finally:
        evidence.set_collateral_lookup(None)


def test_dev_trust_root(tmp_path: Path) -> None:
    issued = dt.datetime(2026, 3, 1, 12, 0, 0, tzinfo=dt.UTC)
    pki = DevPki.create(tmp_path / "pki", now=issued)
    q = tmp_path / "sim.quote"
    q.write_bytes(tdx_quote(pki, report_data=bytes(64)))
    coll = tmp_path / "coll.json"
    coll.write_text(pki.collateral_json("tdx"))
    at = (issued + dt.timedelta(hours=1)).isoformat()
    code, out = _run("--quote", str(q), "--collateral", str(coll), "--at", at)
    assert code == 1 and "pck_chain" in out
    code, out = _run(
        "--quote", str(q), "--collateral", str(coll), "--at", at, "--trust-root", str(pki.root_pem_path)
    )
    assert code == 0 and "dev root" in out
