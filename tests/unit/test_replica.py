"""What replicas share through the database under the seal (``keybroker.replica``,
``keybroker.seal.shared``): two ``Services`` on one database with two data dirs, as two replicas.

Before (issue 15): a second replica with its own data dir made its own TLS anchor (clients pinning
the first one failed) and its own token signing key (every token got 401 there); it worked only
after ``ca/`` and ``token-signing-key.pem`` were copied by hand.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from sqlalchemy import text

from keybroker.api.services import DEV_UNSEAL_FILE, TOKEN_KEY_FILE, Services
from keybroker.auth import tokens
from keybroker.config import Settings
from keybroker.errors import Conflict, Sealed
from keybroker.replica import Served
from keybroker.seal.shared import SharedSecretBroken, SharedSecrets

NAMES = ["127.0.0.1", "localhost", "kb2.example"]


@pytest.fixture
def first(tmp_path: Path) -> Iterator[Services]:
    svc = Services.build(
        Settings(data_dir=tmp_path / "one", database=f"sqlite:///{tmp_path / 'kb.db'}", dev=True)
    )
    yield svc
    svc.db.dispose()


def _second(tmp_path: Path) -> Services:
    """Another replica: an empty data dir, not --dev (sealed until given the first's unseal key)."""
    return Services.build(Settings(data_dir=tmp_path / "two", database=f"sqlite:///{tmp_path / 'kb.db'}"))


def _unseal(second: Services, first: Services) -> None:
    second.barrier.unseal_devfile(first.settings.data_dir / DEV_UNSEAL_FILE)


def test_a_replica_joins_with_an_empty_data_dir(first: Services, tmp_path: Path) -> None:
    second = _second(tmp_path)
    try:
        one, two = first.settings.data_dir, second.settings.data_dir
        # sealed: nothing from the database is written yet (its certificates are authenticated only
        # by opening their rows under the root key), no private key, no token key
        assert not (two / "ca" / "ca.pem").exists() and not (two / "ca" / "issuing-ca.pem").exists()
        assert not (two / "ca" / "ca-key.pem").exists() and not (two / "ca" / "issuing-ca-key.pem").exists()
        assert not (two / TOKEN_KEY_FILE).exists()
        with pytest.raises(Sealed):
            _ = second.tls_ca.key
        # it serves a bootstrap certificate until it can issue its own
        served = second.replica.serve_tls(NAMES)
        assert served.bootstrap and served.anchor == two / "tls" / "bootstrap-ca.pem"
        switched: list[Served] = []
        second.replica.on_certificate(switched.append)

        _unseal(second, first)

        # unsealed: its certificate from the shared anchor, for its names; the token key written
        assert len(switched) == 1 and not switched[0].bootstrap
        assert switched[0].anchor == two / "ca" / "ca.pem"
        assert not (two / "tls" / "bootstrap-ca.pem").exists()
        chain = x509.load_pem_x509_certificates(switched[0].cert.read_bytes())
        chain[0].verify_directly_issued_by(first.tls_ca.cert)
        sans = chain[0].extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert "kb2.example" in sans.get_values_for_type(x509.DNSName)
        assert (two / TOKEN_KEY_FILE).read_bytes() == (one / TOKEN_KEY_FILE).read_bytes()
        assert (two / TOKEN_KEY_FILE).stat().st_mode & 0o777 == 0o600
        assert (two / "ca" / "ca.pem").read_bytes() == (one / "ca" / "ca.pem").read_bytes()
        assert (two / "ca" / "issuing-ca.pem").read_bytes() == (one / "ca" / "issuing-ca.pem").read_bytes()
        assert not (two / "ca" / "ca-key.pem").exists()  # the CA keys stay in the database
        # one CA, one token key: a token minted by either is accepted by both
        token = first.tokens.mint("admin", ["*:*"])
        assert second.tokens.verify(token).subject == "admin"
        assert first.tokens.verify(second.tokens.mint("other", ["keys:search"])).subject == "other"
        assert second.issuing_ca.key.public_key() == first.issuing_ca.key.public_key()

        second.barrier.seal()  # what was opened under the seal goes with it
        with pytest.raises(Sealed):
            _ = second.issuing_ca.key
    finally:
        second.db.dispose()


def test_the_database_holds_no_private_key_in_clear(first: Services) -> None:
    one = first.settings.data_dir
    secrets = [
        serialization.load_pem_private_key((one / "ca" / name).read_bytes(), None)
        for name in ("ca-key.pem", "issuing-ca-key.pem")
    ]
    token_key = tokens.load_signing_key(one / TOKEN_KEY_FILE)
    with first.db.session() as s:
        rows = s.execute(text("SELECT name, public, sealed FROM shared_secrets ORDER BY name")).all()
    names = [r.name for r in rows]
    assert names == ["ca:issuing", "ca:tls", f"token-signing-key:{tokens.key_id(token_key)}"]
    blob = b"".join(bytes(r.sealed) + r.public.encode() for r in rows)
    for key in secrets:
        raw = key.private_numbers().private_value.to_bytes(48, "big")  # type: ignore[union-attr]
        der = key.private_bytes(
            serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        assert raw not in blob and der not in blob
    assert token_key.as_pem(private=True) not in blob


def test_a_row_changed_in_the_database_does_not_open(first: Services) -> None:
    shared = SharedSecrets(first.db, first.barrier)
    with first.db.session() as s:
        tls = s.execute(text("SELECT sealed FROM shared_secrets WHERE name = 'ca:tls'")).scalar_one()
        # the TLS anchor's sealed key under the issuing CA's name (and certificate)
        s.execute(text("UPDATE shared_secrets SET sealed = :b WHERE name = 'ca:issuing'"), {"b": tls})
    with pytest.raises(SharedSecretBroken, match="does not open"):
        shared.get("ca:issuing")
    with first.db.session() as s:  # another certificate beside the TLS anchor's key
        other = s.execute(text("SELECT public FROM shared_secrets WHERE name = 'ca:issuing'")).scalar_one()
        s.execute(text("UPDATE shared_secrets SET public = :p WHERE name = 'ca:tls'"), {"p": other})
    with pytest.raises(SharedSecretBroken):
        shared.get("ca:tls")


def test_a_data_dir_with_its_own_ca_takes_the_shared_one(first: Services, tmp_path: Path) -> None:
    """The issue's set-up: a second data dir that made its own CAs (as every data dir did before)."""
    own = Services.build(Settings(data_dir=tmp_path / "two", database=f"sqlite:///{tmp_path / 'other.db'}"))
    own.db.dispose()
    own_anchor = (tmp_path / "two" / "ca" / "ca.pem").read_bytes()
    assert own_anchor != (first.settings.data_dir / "ca" / "ca.pem").read_bytes()
    second = _second(tmp_path)
    try:
        ca = tmp_path / "two" / "ca"
        assert (ca / "ca.pem").read_bytes() == own_anchor  # untouched while sealed
        _unseal(second, first)
        assert (ca / "ca.pem").read_bytes() == (first.settings.data_dir / "ca" / "ca.pem").read_bytes()
        aside = sorted(ca.glob("replaced-*"))
        assert aside and (aside[0] / "ca.pem").read_bytes() == own_anchor  # kept, not deleted
        assert (aside[0] / "ca-key.pem").exists()
        assert second.tls_ca.cert == first.tls_ca.cert
    finally:
        second.db.dispose()


def test_a_rotated_token_key_reaches_every_replica(first: Services, tmp_path: Path) -> None:
    second = _second(tmp_path)
    try:
        _unseal(second, first)
        kid = first.tokens.rotate_key(actor="cli:test")  # keybroker token rotate-key on the first
        first.replica.sync()  # the first seals its new key into the database
        second.replica.sync()  # the second writes it into its data dir
        key = tokens.load_signing_key(second.settings.data_dir / TOKEN_KEY_FILE)
        assert tokens.key_id(key) == kid
        with first.db.session() as s:
            names = (
                s.execute(text("SELECT name FROM shared_secrets WHERE name LIKE 'token%'")).scalars().all()
            )
        assert names == [f"token-signing-key:{kid}"]  # the retired key's sealed copy is gone
        assert first.tokens.verify(second.tokens.mint("after", ["keys:search"])).subject == "after"
    finally:
        second.db.dispose()


def test_a_rotation_is_not_rolled_back_by_writing_the_database(first: Services, tmp_path: Path) -> None:
    """``keybroker token rotate-key`` refuses every token issued before (an incident: a token
    leaked). Whoever can write the database kept the old key's sealed row from before, and puts it
    back with the old key recorded as current again: the row opens under the root key (it is the
    genuine one), so before, each replica wrote the old key into its data dir at its next sync and
    the leaked token was accepted again. Now a replica never takes back a key it saw retired."""
    from fastapi.testclient import TestClient

    from keybroker.api.app import create_app
    from keybroker.auth.authn import Authenticator
    from keybroker.auth.registry import TokenRegistry

    second = _second(tmp_path)
    try:
        _unseal(second, first)
        for svc in (first, second):  # no 5-second cache between the database and the check
            svc.tokens = TokenRegistry(svc.db, svc.settings.data_dir / TOKEN_KEY_FILE, cache_seconds=0)
            svc.authn = Authenticator(svc.tokens, svc.roles, svc.oidc)
        leaked = {"Authorization": "Bearer " + first.tokens.mint("leaked", ["*:*"])}
        old_kid = tokens.key_id(tokens.load_signing_key(first.settings.data_dir / TOKEN_KEY_FILE))
        with first.db.session() as s:
            saved = s.execute(text("SELECT * FROM shared_secrets WHERE name LIKE 'token%'")).mappings().one()
        new_kid = first.tokens.rotate_key(actor="cli:test")
        first.replica.sync()
        second.replica.sync()
        apps = [TestClient(create_app(svc), base_url="https://testserver") for svc in (first, second)]
        for app in apps:
            assert app.get("/kbs/v1/keys", headers=leaked).status_code == 401

        with first.db.session() as s:  # the attacker's rollback
            s.execute(text("DELETE FROM shared_secrets WHERE name LIKE 'token%'"))
            s.execute(
                text("INSERT INTO shared_secrets VALUES (:name, :public, :sealed, :created_at)"), dict(saved)
            )
            s.execute(text("UPDATE bearer_token_keys SET retired_at = NULL WHERE kid = :k"), {"k": old_kid})
            s.execute(
                text("UPDATE bearer_token_keys SET retired_at = CURRENT_TIMESTAMP WHERE kid = :k"),
                {"k": new_kid},
            )
        for svc, app in zip((first, second), apps, strict=True):
            svc.replica.sync()  # the 30-second sync
            r = app.get("/kbs/v1/keys", headers=leaked)
            assert r.status_code == 401, r.text
            key = tokens.load_signing_key(svc.settings.data_dir / TOKEN_KEY_FILE)
            assert tokens.key_id(key) == new_kid
            assert old_kid in svc.tokens.retired_kids()
            assert (svc.settings.data_dir / "token-signing-key.retired").stat().st_mode & 0o777 == 0o600
    finally:
        second.db.dispose()


def test_replacing_the_tls_anchor_as_docs_certificates_md_says(first: Services, tmp_path: Path) -> None:
    second = _second(tmp_path)
    _unseal(second, first)
    old = first.tls_ca.cert
    first.db.dispose()
    second.db.dispose()
    # 1. every replica stopped; the anchor out of the database and out of one data dir
    ca = first.settings.data_dir / "ca"
    with second.db.session() as s:
        s.execute(text("DELETE FROM shared_secrets WHERE name = 'ca:tls'"))
    kept = tmp_path / "old-anchor"
    kept.mkdir()
    for name in ("ca.pem", "ca-key.pem"):
        (ca / name).rename(kept / name)
    # 2. that replica starts (--dev: unsealed at once): a new anchor, sealed into the database
    one = Services.build(first.settings)
    try:
        assert one.tls_ca.cert != old and (ca / "ca.pem").exists()
        with one.db.session() as s:
            public = s.execute(text("SELECT public FROM shared_secrets WHERE name = 'ca:tls'")).scalar_one()
        assert x509.load_pem_x509_certificate(public.encode()) == one.tls_ca.cert
        # 3. the others take it from the database, their old certificate moved aside
        two = _second(tmp_path)
        try:
            _unseal(two, one)
            assert two.tls_ca.cert == one.tls_ca.cert
            assert (two.settings.data_dir / "ca" / "ca.pem").read_bytes() == (ca / "ca.pem").read_bytes()
            aside = sorted((two.settings.data_dir / "ca").glob("replaced-*"))
            assert aside and x509.load_pem_x509_certificate((aside[0] / "ca.pem").read_bytes()) == old
        finally:
            two.db.dispose()
    finally:
        one.db.dispose()


def test_a_replaced_tls_anchor_is_not_rolled_back_by_writing_the_database(
    first: Services, tmp_path: Path
) -> None:
    """The TLS anchor was replaced as docs/certificates.md says (it had signed key certificates whose
    holders could pass for the broker). Whoever can write the database saved the old anchor's row
    from before and puts it back: it opens under the root key. Before, a replica restarted after
    that took the old anchor back (its new one moved aside), issued its HTTPS certificate from it and
    wrote it into ca/ca.pem for clients to pin. Now it keeps the new one."""
    second = _second(tmp_path)
    _unseal(second, first)
    with first.db.session() as s:
        saved = s.execute(text("SELECT * FROM shared_secrets WHERE name = 'ca:tls'")).mappings().one()
    first.db.dispose()
    second.db.dispose()
    ca = first.settings.data_dir / "ca"
    with second.db.session() as s:
        s.execute(text("DELETE FROM shared_secrets WHERE name = 'ca:tls'"))
    kept = tmp_path / "old-anchor"
    kept.mkdir()
    for name in ("ca.pem", "ca-key.pem"):
        (ca / name).rename(kept / name)
    one = Services.build(first.settings)
    new = one.tls_ca.cert
    two = _second(tmp_path)
    two.replica.serve_tls(NAMES)
    _unseal(two, one)  # its HTTPS certificate from the new anchor
    assert two.tls_ca.cert == new
    two.db.dispose()
    one.db.dispose()

    with one.db.session() as s:  # the attacker's rollback
        s.execute(text("DELETE FROM shared_secrets WHERE name = 'ca:tls'"))
        s.execute(
            text("INSERT INTO shared_secrets VALUES (:name, :public, :sealed, :created_at)"), dict(saved)
        )
    again = _second(tmp_path)
    try:
        served = again.replica.serve_tls(NAMES)
        assert not served.bootstrap
        _unseal(again, one)  # the sync fails (logged)
        with pytest.raises(Conflict, match="replaced"):
            again.replica.sync()
        anchor = again.settings.data_dir / "ca" / "ca.pem"
        assert x509.load_pem_x509_certificate(anchor.read_bytes()) == new
        assert again.tls_ca.cert == new
        chain = x509.load_pem_x509_certificates(served.cert.read_bytes())
        chain[0].verify_directly_issued_by(new)
    finally:
        again.db.dispose()


def test_a_certificate_put_in_the_database_is_not_pinned(first: Services, tmp_path: Path) -> None:
    """Whoever can write the database (not the root key) puts their own CA certificate beside the
    TLS anchor's sealed key, so that replicas would write it into their data dirs for clients to
    pin. A new replica writes no CA certificate while sealed; unsealed, the row does not open (its
    sealed key is bound to the genuine certificate), so it writes none either, and serves only its
    bootstrap certificate; the first replica's data dir keeps the genuine anchor."""
    genuine = (first.settings.data_dir / "ca" / "ca.pem").read_bytes()
    from datetime import UTC, datetime, timedelta

    from cryptography.hazmat.primitives.asymmetric import ec

    from keybroker.keys.certs import make_ca

    forged = make_ca(
        ec.generate_private_key(ec.SECP384R1()), "keybroker TLS CA", datetime.now(UTC), timedelta(days=30)
    )
    with first.db.session() as s:
        s.execute(
            text("UPDATE shared_secrets SET public = :p WHERE name = 'ca:tls'"),
            {"p": forged.public_bytes(serialization.Encoding.PEM).decode()},
        )
    second = _second(tmp_path)
    try:
        two = second.settings.data_dir / "ca"
        assert not (two / "ca.pem").exists()
        assert second.replica.serve_tls(NAMES).bootstrap
        _unseal(second, first)  # the sync fails (logged): the forged row does not open
        assert not (two / "ca.pem").exists()
        with pytest.raises(SharedSecretBroken):
            second.replica.sync()
        assert (first.settings.data_dir / "ca" / "ca.pem").read_bytes() == genuine
    finally:
        second.db.dispose()


def test_a_certificate_put_in_the_database_is_not_shown_to_pin_by_a_restarted_replica(
    first: Services, tmp_path: Path
) -> None:
    """The same forged row, seen by a replica that already holds the genuine anchor (a restart, or a
    data dir from before). Before, it loaded the database's certificate as its TLS anchor while
    sealed: ``keybroker serve`` printed the forged fingerprint as the one clients pin, and the
    replica, its own HTTPS certificate no longer "issued by its anchor", fell back to the bootstrap
    certificate for good (the sync never opened the row). Now the data dir's certificate stays its
    anchor until the database's row opens under the root key."""
    from datetime import UTC, datetime, timedelta

    from cryptography.hazmat.primitives.asymmetric import ec

    from keybroker.keys.certs import make_ca

    second = _second(tmp_path)
    second.replica.serve_tls(NAMES)
    _unseal(second, first)
    genuine = second.tls_ca.fingerprint_sha384
    assert genuine == first.tls_ca.fingerprint_sha384
    second.db.dispose()  # stopped

    forged = make_ca(
        ec.generate_private_key(ec.SECP384R1()), "keybroker TLS CA", datetime.now(UTC), timedelta(days=30)
    )
    with first.db.session() as s:
        s.execute(
            text("UPDATE shared_secrets SET public = :p WHERE name = 'ca:tls'"),
            {"p": forged.public_bytes(serialization.Encoding.PEM).decode()},
        )
    again = _second(tmp_path)  # restarted, sealed
    try:
        assert again.tls_ca.fingerprint_sha384 == genuine  # what `keybroker serve` prints to pin
        served = again.replica.serve_tls(NAMES)
        assert not served.bootstrap
        chain = x509.load_pem_x509_certificates(served.cert.read_bytes())
        chain[0].verify_directly_issued_by(first.tls_ca.cert)
        _unseal(again, first)  # the sync fails (logged): the forged row does not open
        with pytest.raises(SharedSecretBroken):
            again.replica.sync()
        assert again.tls_ca.fingerprint_sha384 == genuine
        two = again.settings.data_dir / "ca" / "ca.pem"
        assert x509.load_pem_x509_certificate(two.read_bytes()) == first.tls_ca.cert
    finally:
        again.db.dispose()


def test_a_console_session_from_one_replica_is_good_on_the_other(first: Services, tmp_path: Path) -> None:
    """Behind a load balancer, a person signed in through one replica keeps their session and its
    CSRF token on the next request, which another replica answers, and signing out on either ends it
    on both: the session is a row in the shared database (the SHA-256 of the cookie's random secret)
    and the CSRF token an HMAC keyed with that secret, so no replica holds a key of its own for
    either."""
    from fastapi.testclient import TestClient
    from tests.api.test_console import LOCAL, sign_in

    from keybroker.api.app import create_app
    from keybroker.ui import security

    second = _second(tmp_path)
    try:
        _unseal(second, first)
        base = "https://127.0.0.1:9443"
        with (
            TestClient(create_app(first), base_url=base, client=LOCAL) as a,
            TestClient(create_app(second), base_url=base, client=LOCAL) as b,
        ):
            csrf = sign_in(a, "alice", ["key-admin"])  # the dev login: the first replica is --dev
            secret = a.cookies.get(security.SESSION_COOKIE)
            assert secret
            b.cookies.set(security.SESSION_COOKIE, secret, domain="127.0.0.1")  # the same browser
            keys = b.get("/ui/keys", follow_redirects=False)
            assert keys.status_code == 200 and "alice" in keys.text
            r = b.post(
                "/ui/keys",
                data={
                    "csrf": csrf,
                    "mode": "generate",
                    "algorithm": "AES",
                    "key_length": "256",
                    "label": "lb",
                },
                follow_redirects=False,
            )
            assert r.status_code == 303, r.text
            key_id = r.headers["location"].rsplit("/", 1)[1]
            assert key_id in a.get("/ui/keys").text  # made through the second, seen through the first
            # a CSRF token of another session is refused on the second as on the first
            other = TestClient(create_app(first), base_url=base, client=LOCAL)
            with other:
                stranger = sign_in(other, "mallory", ["key-admin"])
            assert b.post("/ui/logout", data={"csrf": stranger}).status_code == 403
            assert b.post("/ui/logout", data={"csrf": csrf}, follow_redirects=False).status_code == 303
            a_after = a.get("/ui/keys", follow_redirects=False)
            assert a_after.status_code == 303 and a_after.headers["location"] == "/ui/login"
    finally:
        second.db.dispose()
