"""What a replica shares with the others through the database, and what it keeps for itself.

Shared, in ``shared_secrets`` under the seal (:mod:`keybroker.seal.shared`): the TLS anchor's and
the issuing CA's keys (their certificates in clear beside them) and the current bearer token
signing key. So a replica joins with an empty data dir: once unsealed (when the rows open under the
root key, which authenticates the certificates beside them) it writes the CAs' certificates into
it (``ca/ca.pem``, ``ca/issuing-ca.pem``: what clients pin), issues itself an HTTPS certificate
from the shared TLS anchor, for the names it serves, and writes the token signing key into its data
dir (for the local ``keybroker token`` commands).

Kept: its own HTTPS certificate and key (``tls/``), its audit checkpoint key and checkpoints.

Adoption: the first replica of a new broker, and every data dir from before, creates or has its
CAs and token key as files; at its first unsealed moment they are sealed into the database (the
files stay, unread from then on). When the database already holds others (two data dirs that each
made their own), the database's win: the data dir's differing CA files are moved aside (kept) and
a warning names both fingerprints.

Until it can issue its certificate (sealed, the anchor's key under the seal) a new replica serves a
bootstrap certificate that nothing trusts but the operator commands on its host (``server.json``
names it); :meth:`Replica.sync` runs at each unseal and every :data:`SYNC_SECONDS` while unsealed,
and the listeners (``keybroker serve``) switch new connections to the certificate it issues.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from keybroker.auth import tokens
from keybroker.auth.registry import SHARED_KEY_PREFIX, TokenRegistry
from keybroker.errors import Conflict, InvalidInput, KeybrokerError, Sealed
from keybroker.keys.certs import PrivateKey
from keybroker.keys.serviceca import (
    CA_DIR,
    ISSUING_CA_CERT,
    ISSUING_CA_KEY,
    ISSUING_CA_NAME,
    TLS_CA_CERT,
    TLS_CA_KEY,
    TLS_CA_NAME,
    ServiceCA,
    ServiceCAs,
    bootstrap_server_cert,
    current_server_cert,
    load_or_create_ca,
    load_or_create_server_cert,
    load_private_key,
    move_aside,
    private_pem,
    remove_bootstrap,
    write_certificate,
)
from keybroker.seal.barrier import Barrier
from keybroker.seal.shared import SharedSecrets
from keybroker.store.db import Database

log = logging.getLogger("keybroker.replica")

#: How often an unsealed replica syncs (its certificate's renewal, a rotated token key).
SYNC_SECONDS = 30.0
#: How often a sealed replica with an auto seal looks whether the key store was initialized.
SEALED_POLL_SECONDS = 2.0


@dataclass(frozen=True)
class _Role:
    name: str  # in shared_secrets
    cert_file: str
    key_file: str
    common_name: str


TLS_ROLE = _Role("ca:tls", TLS_CA_CERT, TLS_CA_KEY, TLS_CA_NAME)
ISSUING_ROLE = _Role("ca:issuing", ISSUING_CA_CERT, ISSUING_CA_KEY, ISSUING_CA_NAME)


@dataclass(frozen=True)
class Served:
    """The HTTPS certificate a replica serves: chain and key files, and the CA a client on this host
    pins for it (the TLS anchor, or the bootstrap CA while ``bootstrap``)."""

    cert: Path
    key: Path
    anchor: Path
    bootstrap: bool = False
    #: The chain as served (another process on this data dir may renew the files: ``--workers``).
    chain: bytes = b""


def _pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode()


class Replica:
    def __init__(self, data_dir: Path, db: Database, barrier: Barrier, registry: TokenRegistry) -> None:
        self.data_dir = data_dir
        self._db = db
        self._barrier = barrier
        self._shared = SharedSecrets(db, barrier)
        self._registry = registry
        self._lock = threading.RLock()
        #: CAs whose key is still the data dir's file: sealed into the database at the next sync.
        self._to_adopt: set[str] = set()
        #: CAs whose database certificate the data dir lacks: written at the next sync, once the
        #: row opens under the root key.
        self._to_take: set[str] = set()
        self._ca_dir = data_dir / CA_DIR
        self._ca_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        tls, issuing = self._load(TLS_ROLE), self._load(ISSUING_ROLE)
        if tls.cert.public_key() == issuing.cert.public_key():
            raise InvalidInput(
                f"{tls.cert_path} and {issuing.cert_path} must be two CAs, not one", field="data_dir"
            )
        self.cas = ServiceCAs(tls, issuing)
        #: The names this replica serves HTTPS for (None: it serves no HTTPS, e.g. in tests).
        self._names: list[str] | None = None
        self._served: Served | None = None
        self._listeners: list[Callable[[Served], None]] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._sealed_on_purpose = False
        barrier.on_unseal(self.sync)
        barrier.on_seal(self._forget)

    # --- the CAs -------------------------------------------------------------------------------

    def _opener(self, role: _Role, cert: x509.Certificate) -> Callable[[], PrivateKey]:
        def key() -> PrivateKey:
            found = self._shared.get(role.name)
            if found is None or found.public != _pem(cert):
                raise Sealed(f"the {role.common_name}'s key is not in the database (yet)")
            opened = load_private_key(found.private, f"the database's {role.common_name} key")
            if opened.public_key() != cert.public_key():
                raise InvalidInput(f"the database's {role.common_name} key does not match its certificate")
            return opened

        return key

    def _load(self, role: _Role) -> ServiceCA:
        """The CA of ``role``: the database's, else the data dir's files (created if absent), to be
        adopted at the first sync.

        The database's certificate is not authenticated until its row opens under the root key
        (its sealed half is bound to it): whoever can write the database could put another there.
        So while sealed it is only compared with the data dir's, never written over it nor shown or
        served in its place (the data dir's stays this replica's anchor); a data dir without it, or
        with another, gets it at the first sync (:meth:`_take`)."""
        cert_path = self._ca_dir / role.cert_file
        public = self._shared.public(role.name)
        if public is None:
            ca, _ = load_or_create_ca(self._ca_dir, role.cert_file, role.key_file, role.common_name)
            self._to_adopt.add(role.name)
            return ca
        cert = x509.load_pem_x509_certificate(public.encode())
        if cert_path.exists():
            local = x509.load_pem_x509_certificate(cert_path.read_bytes())
            if local != cert:
                self._to_take.add(role.name)
                return ServiceCA(local, self._opener(role, local), cert_path)
        else:
            self._to_take.add(role.name)
        return ServiceCA(cert, self._opener(role, cert), cert_path)

    def _take(self, role: _Role, ca: ServiceCA) -> None:
        """Write the database's CA certificate of ``role`` into the data dir, now that its row opens
        under the root key (the certificate is authentic)."""
        found = self._shared.get(role.name)
        if found is None:
            raise Sealed(f"the {role.common_name} is no longer in the database")
        cert = x509.load_pem_x509_certificate(found.public.encode())
        self._keep_only(role, cert)
        if cert != ca.cert:
            ca.replace(cert, self._opener(role, cert))

    def _keep_only(self, role: _Role, cert: x509.Certificate) -> None:
        """Make the data dir's certificate of ``role`` the shared ``cert``; files of another CA are
        moved aside (a key file of this very CA stays: it is no longer read). A CA this data dir
        moved aside before is never taken back (``Conflict``): its row, saved before the anchor was
        replaced, opens under the root key, so only the data dir can tell that it is a rollback."""
        cert_path, key_path = self._ca_dir / role.cert_file, self._ca_dir / role.key_file
        for replaced in sorted(self._ca_dir.glob(f"replaced-*/{role.cert_file}")):
            if x509.load_pem_x509_certificate(replaced.read_bytes()) == cert:
                raise Conflict(
                    f"the database's {role.common_name} (SHA-384 {cert.fingerprint(hashes.SHA384()).hex()}) "
                    f"is the one this data dir replaced ({replaced}): not taken back (a database restored "
                    "from before the anchor was replaced, or rolled back by whoever can write it)"
                )
        other = False
        if cert_path.exists():
            other = x509.load_pem_x509_certificate(cert_path.read_bytes()) != cert
        if not other and key_path.exists():
            other = load_private_key(key_path.read_bytes(), str(key_path)).public_key() != cert.public_key()
        if other:
            move_aside(
                self._ca_dir,
                (role.cert_file, role.key_file),
                f"this data dir's {role.common_name} is not the one the replicas share (SHA-384 "
                f"{cert.fingerprint(hashes.SHA384()).hex()}, in the database): clients must pin the shared one",
            )
        if not cert_path.exists() or x509.load_pem_x509_certificate(cert_path.read_bytes()) != cert:
            write_certificate(cert_path, cert)

    def _adopt(self, role: _Role, ca: ServiceCA) -> None:
        """Seal the data dir's CA into the database, or take the one another replica stored first."""
        key = ca.key
        if self._shared.put(role.name, _pem(ca.cert), private_pem(key)):
            log.info(
                "%s (%s) is now in the database, sealed, for every replica; %s is no longer read",
                role.common_name,
                ca.cert_path,
                self._ca_dir / role.key_file,
            )
            ca.replace(ca.cert, self._opener(role, ca.cert))
            return
        found = self._shared.get(role.name)  # another replica's, authenticated by opening it
        if found is None:
            raise Sealed(f"the {role.common_name} is no longer in the database")
        shared = x509.load_pem_x509_certificate(found.public.encode())
        if shared != ca.cert:
            self._keep_only(role, shared)
        ca.replace(shared, self._opener(role, shared))

    # --- the token signing key -----------------------------------------------------------------

    def _sync_token_key(self) -> None:
        kid = self._registry.current_kid()
        if kid is None:
            return
        name = SHARED_KEY_PREFIX + kid
        found = self._shared.get(name)
        local = self._registry.local_key()
        local_kid = tokens.key_id(local) if local is not None else None
        if found is not None:
            if local_kid != kid:
                try:
                    self._registry.write_key_file(found.private)
                except Conflict as exc:
                    log.error("%s", exc.detail)
                    return
                log.info("wrote the current token signing key (kid %s) into %s", kid, self._registry.key_file)
        elif local is not None and local_kid == kid:
            public = local.as_pem(private=False)
            pem = local.as_pem(private=True)
            if self._shared.put(name, public.decode(), pem):
                log.info(
                    "the token signing key (kid %s) is now in the database, sealed, for every replica", kid
                )

    # --- the HTTPS certificate -----------------------------------------------------------------

    def serve_tls(self, names: list[str]) -> Served:
        """The certificate to serve now for ``names``: the data dir's if it is the anchor's and
        current, else one issued now, else (sealed: the anchor's key under the seal) a bootstrap
        one, replaced by :meth:`sync` once unsealed."""
        with self._lock:
            self._names = list(names)
            tls = self.cas.tls
            try:
                cert, key = load_or_create_server_cert(self.data_dir, tls, names)
                self._served = Served(cert, key, tls.cert_path, chain=cert.read_bytes())
                remove_bootstrap(self.data_dir)
            except Sealed:
                cert, key, anchor = bootstrap_server_cert(self.data_dir, names)
                self._served = Served(cert, key, anchor, bootstrap=True, chain=cert.read_bytes())
                log.warning(
                    "this replica has no HTTPS certificate from the TLS anchor yet and cannot issue one "
                    "while sealed: until it is unsealed it serves a bootstrap certificate that only the "
                    "operator commands on this host trust (keybroker operator unseal --data-dir %s)",
                    self.data_dir,
                )
            return self._served

    def on_certificate(self, listener: Callable[[Served], None]) -> None:
        """Call ``listener`` with each new certificate :meth:`sync` issues (``keybroker serve``)."""
        self._listeners.append(listener)

    def _sync_server_cert(self) -> None:
        names, served = self._names, self._served
        if names is None or served is None:
            return
        tls = self.cas.tls
        current = current_server_cert(self.data_dir, tls, names)
        if current is not None and not served.bootstrap and current[0].read_bytes() == served.chain:
            return
        cert, key = load_or_create_server_cert(self.data_dir, tls, names)
        self._served = Served(cert, key, tls.cert_path, chain=cert.read_bytes())
        remove_bootstrap(self.data_dir)
        log.info("serving the HTTPS certificate %s issued by the TLS anchor %s", cert, tls.cert_path)
        for listener in self._listeners:
            listener(self._served)

    def _forget(self) -> None:
        self._sealed_on_purpose = True
        self.cas.tls.forget()
        self.cas.issuing.forget()

    # --- sync ----------------------------------------------------------------------------------

    def sync(self) -> None:
        """While unsealed: adopt the data dir's CAs and token key the database lacks, take the
        database's, and keep the HTTPS certificate current. Idempotent; raises what fails (the
        next run retries)."""
        if self._barrier.sealed:
            return
        with self._lock:
            for role, ca in ((TLS_ROLE, self.cas.tls), (ISSUING_ROLE, self.cas.issuing)):
                if role.name in self._to_adopt:
                    self._adopt(role, ca)
                    self._to_adopt.discard(role.name)
                if role.name in self._to_take:
                    self._take(role, ca)
                    self._to_take.discard(role.name)
            _ = self.cas.issuing.key  # opened now, not first inside a transaction (SQLite: one writer)
            self._sync_token_key()
            self._sync_server_cert()

    def sync_logged(self) -> None:
        """:meth:`sync`, a failure logged (the thread retries it at the next interval)."""
        try:
            self.sync()
        except Exception as exc:  # noqa: BLE001 - retried at the next interval
            if self._db.availability.failed(exc) is None:  # a database outage is logged once
                log.error("replica sync failed: %s: %s", type(exc).__name__, exc)

    def _auto_unseal(self) -> None:
        """A replica with an auto seal that found the key store uninitialized at start (another
        replica or worker ran ``operator init``) unseals once it is: never after ``seal``."""
        if self._sealed_on_purpose or self._barrier.auto_seal is None:
            return
        try:
            if self._barrier.auto_unseal():
                log.info("auto-unsealed: the key store was initialized by another replica")
        except KeybrokerError as exc:  # the seal backend: the start-up retry thread says so, with backoff
            log.debug("auto-unseal failed: %s", exc.detail)
        except Exception as exc:  # noqa: BLE001 - tried again at the next interval
            if self._db.availability.failed(exc) is None:
                log.warning("auto-unseal failed: %s: %s", type(exc).__name__, exc)

    def _run(self) -> None:
        while not self._stop.wait(SEALED_POLL_SECONDS if self._barrier.sealed else SYNC_SECONDS):
            if self._barrier.sealed:
                self._auto_unseal()
            else:
                self.sync_logged()

    def start(self) -> None:
        """Sync every :data:`SYNC_SECONDS` (a thread, started with the app)."""
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="replica-sync", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        thread, self._thread = self._thread, None
        if thread is not None:
            self._stop.set()
            thread.join()
