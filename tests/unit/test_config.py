"""Settings: defaults < TOML file < KEYBROKER_* environment < flags; clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from keybroker.config import load_settings
from keybroker.errors import InvalidInput


def test_precedence(tmp_path: Path) -> None:
    cfg = tmp_path / "kb.toml"
    cfg.write_text(
        'listen = "127.0.0.1:9000"\nlog_format = "json"\ndata_dir = "/srv/kb"\n[trust]\ndev_roots = ["/x/root.pem"]\n'
    )
    s = load_settings(cfg, environ={})
    assert (s.port, s.log_format, s.data_dir, s.trust.dev_roots) == (
        9000,
        "json",
        Path("/srv/kb"),
        [Path("/x/root.pem")],
    )
    s = load_settings(cfg, environ={"KEYBROKER_LISTEN": "127.0.0.1:9100", "KEYBROKER_DEV": "true"})
    assert s.port == 9100 and s.dev is True
    s = load_settings(cfg, environ={"KEYBROKER_LISTEN": "127.0.0.1:9100"}, listen="[::1]:9200")
    assert (s.host, s.port) == ("::1", 9200)
    s = load_settings(None, environ={"KEYBROKER_CONFIG": str(cfg)})
    assert s.port == 9000
    assert load_settings(None, environ={}).database_url.startswith("sqlite:///")


@pytest.mark.parametrize(
    ("toml", "env", "fragment"),
    [
        ("listen = 'nonsense'\n", {}, "listen"),
        ("listen = '127.0.0.1:99999'\n", {}, "out of range"),
        ("bogus = 1\n", {}, "bogus"),
        ("log_format = 'xml'\n", {}, "log_format"),
        ("", {"KEYBROKER_NONCE_TTL_SECONDS": "1"}, "nonce_ttl_seconds"),
        ("not toml [", {}, "not valid TOML"),
    ],
)
def test_errors_name_the_setting(tmp_path: Path, toml: str, env: dict[str, str], fragment: str) -> None:
    cfg = tmp_path / "kb.toml"
    cfg.write_text(toml)
    with pytest.raises(InvalidInput, match=fragment):
        load_settings(cfg, environ=env)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="does not exist"):
        load_settings(tmp_path / "nope.toml", environ={})


def test_limits_from_toml_and_environment(tmp_path: Path) -> None:
    cfg = tmp_path / "kb.toml"
    cfg.write_text("[limits]\noutstanding_nonces = 500\nunseal_failures_per_minute = 30\n")
    s = load_settings(cfg, environ={"KEYBROKER_LIMITS_OUTSTANDING_NONCES": "700"})
    assert (s.limits.outstanding_nonces, s.limits.unseal_failures_per_minute) == (700, 30)
    assert (s.limits.outstanding_sessions, s.limits.unseal_failures_per_client_per_minute) == (10_000, 10)
    with pytest.raises(InvalidInput, match="limits.outstanding_sessions"):
        load_settings(None, environ={"KEYBROKER_LIMITS_OUTSTANDING_SESSIONS": "0"})


def test_audit_settings_from_toml_and_environment(tmp_path: Path) -> None:
    cfg = tmp_path / "kb.toml"
    cfg.write_text("[audit]\ncheckpoint_interval_seconds = 5\n")
    s = load_settings(cfg, environ={"KEYBROKER_AUDIT_CHECKPOINT_LOG": "true"})
    assert (s.audit.checkpoint_interval_seconds, s.audit.checkpoint_log) == (5, True)
    with pytest.raises(InvalidInput, match="audit.checkpoint_interval_seconds"):
        load_settings(None, environ={"KEYBROKER_AUDIT_CHECKPOINT_INTERVAL_SECONDS": "0"})
