"""Where ``keybroker serve`` listens, and how the operator commands find it.

``serve`` binds its address before it says it listens (a port in use is one line naming the
address, exit 2), then records in the data dir, in ``server.json`` (0600), the URL a client on this
host reaches it at (a loopback address when it listens on every address: the server certificate
always names 127.0.0.1, ::1 and localhost) and the TLS anchor to pin. A clean shutdown marks the
record stopped rather than removing it, so that an operator command run later still names the
address it tried. The operator commands choose their server in this order: ``--server``,
``KEYBROKER_ADDR``, the data dir's record, ``https://127.0.0.1:9443``.

The record is a convenience, not a trust anchor: the data dir that holds it also holds the TLS
anchor, the keys and the database, so whoever can write it owns the service anyway.
"""

from __future__ import annotations

import errno
import ipaddress
import json
import os
import socket
import ssl
import urllib.parse
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import typer

from keybroker import strictjson
from keybroker.cli.common import ServerClient, ServerTarget
from keybroker.config import DEFAULT_PORT
from keybroker.errors import InvalidInput

RECORD_FILE = "server.json"
DEFAULT_URL = f"https://127.0.0.1:{DEFAULT_PORT}"
#: uvicorn's default listen backlog.
BACKLOG = 2048
_WILDCARD_LOOPBACK = {"0.0.0.0": "127.0.0.1", "::": "::1"}  # noqa: S104 - what a client on this host dials


def client_url(scheme: str, host: str, port: int) -> str:
    """The URL a client on this host uses for a server listening on ``host``: a wildcard address
    becomes the loopback address of its family."""
    host = _WILDCARD_LOOPBACK.get(host, host)
    try:
        shown = f"[{host}]" if ipaddress.ip_address(host).version == 6 else host
    except ValueError:
        shown = host  # a host name
    return f"{scheme}://{shown}:{port}"


# --- binding ---------------------------------------------------------------------------------------


_BIND_ERRORS = {
    errno.EADDRINUSE: "the address is already in use (another keybroker, or another program, listens "
    "there): stop it, or give another --listen",
    errno.EACCES: "permission denied (ports below 1024 need root or CAP_NET_BIND_SERVICE): give "
    "another --listen",
    errno.EADDRNOTAVAIL: "that is not an address of this host: give one of its addresses, or 0.0.0.0",
}


class CannotListen(InvalidInput):
    """``serve`` cannot bind its address (exit 2: give another --listen)."""

    title = "Cannot listen"

    def diagnostics(self) -> str:
        return self.detail


def bind(listen: str, host: str, port: int) -> list[socket.socket]:
    """Sockets bound to every address ``host`` resolves to (as asyncio's ``create_server`` would:
    IPv6 sockets IPv6 only), not yet listening. A failure is ``CannotListen`` naming ``listen``."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise CannotListen(
            f"cannot listen on {listen}: {host} does not resolve ({exc.strerror})", field="listen"
        ) from None
    sockets: list[socket.socket] = []
    seen: set[tuple[int, object]] = set()
    try:
        for family, kind, proto, _, address in infos:
            if (family, address) in seen:
                continue
            seen.add((family, address))
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(address)
    except OSError as exc:
        for sock in sockets:
            sock.close()
        why = _BIND_ERRORS.get(exc.errno or 0, exc.strerror or str(exc))
        raise CannotListen(f"cannot listen on {listen}: {why}", field="listen") from None
    return sockets


# --- the record ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ServerRecord:
    """What ``serve`` leaves in ``<data-dir>/server.json`` for the operator commands."""

    #: What a client on this host connects to.
    url: str
    #: The ``--listen`` the server was given.
    listen: str
    #: The TLS anchor, relative to the data dir (``ca/ca.pem``); None for --insecure-http.
    tls_anchor: str | None
    pid: int
    started_at: str
    stopped_at: str | None = None


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def new_record(url: str, listen: str, tls_anchor: str | None) -> ServerRecord:
    return ServerRecord(url=url, listen=listen, tls_anchor=tls_anchor, pid=os.getpid(), started_at=_now())


def write_record(data_dir: Path, record: ServerRecord) -> None:
    """Replace the record whole (0600; no reader sees half of it)."""
    path = data_dir / RECORD_FILE
    tmp = path.with_name(f".{RECORD_FILE}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(asdict(record), f, indent=2)
        f.write("\n")
    os.replace(tmp, path)


def mark_stopped(data_dir: Path, record: ServerRecord) -> None:
    """At a clean shutdown: the record says when this server stopped, unless another server has
    recorded itself since (two servers on one data dir: the last one started keeps its record)."""
    try:
        current = read_record(data_dir)
    except InvalidInput:
        return
    if current is None or (current.pid, current.started_at) != (record.pid, record.started_at):
        return
    if current.stopped_at is None:
        write_record(data_dir, ServerRecord(**{**asdict(current), "stopped_at": _now()}))


def update_anchor(data_dir: Path, record: ServerRecord, tls_anchor: str) -> None:
    """The server of ``record`` now serves a certificate that ``tls_anchor`` anchors (a replica
    that served a bootstrap certificate until unsealed); unless another server recorded itself since."""
    try:
        current = read_record(data_dir)
    except InvalidInput:
        return
    if current is None or (current.pid, current.started_at) != (record.pid, record.started_at):
        return
    write_record(data_dir, ServerRecord(**{**asdict(current), "tls_anchor": tls_anchor}))


class TlsIdentity:
    """The certificate each new TLS connection gets, switched without a restart: uvicorn's context
    (``ssl_context_factory``) hands each handshake, through its SNI callback (called with or without
    SNI), the context of the current certificate. A connection keeps the certificate it began with."""

    #: The one this process's server made its context with (a worker's, for its app factory).
    latest: TlsIdentity | None = None

    def __init__(self) -> None:
        self._current: ssl.SSLContext | None = None
        self._config: Any = None
        self._make: Callable[[], ssl.SSLContext] | None = None

    def factory(self, config: Any, default: Callable[[], ssl.SSLContext]) -> ssl.SSLContext:
        context = default()
        self._config, self._make, self._current = config, default, context
        context.sni_callback = self._pick
        TlsIdentity.latest = self
        return context

    def _pick(self, connection: Any, _server_name: str | None, _context: ssl.SSLContext) -> None:
        current = self._current
        if current is not None and connection.context is not current:
            connection.context = current

    def switch(self, cert: Path, key: Path) -> None:
        """Serve ``cert`` (a chain file) with ``key`` to new connections."""
        if self._config is None or self._make is None:
            return  # not serving TLS (yet)
        self._config.ssl_certfile, self._config.ssl_keyfile = str(cert), str(key)
        self._current = self._make()


def read_record(data_dir: Path) -> ServerRecord | None:
    """The data dir's record, None if there is none; a malformed one is ``InvalidInput``."""
    path = data_dir / RECORD_FILE
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise InvalidInput(f"cannot read {path}: {exc.strerror}", field="data_dir") from None
    doc = strictjson.loads(raw, what=str(path))
    fields = ServerRecord.__dataclass_fields__
    try:  # members it does not know are ignored (a newer keybroker's record)
        record = (
            ServerRecord(**{k: v for k, v in doc.items() if k in fields}) if isinstance(doc, dict) else None
        )
    except TypeError:  # a member missing
        record = None
    if (
        record is None
        or not isinstance(record.url, str)
        or not record.url.startswith(("https://", "http://"))
        or not isinstance(record.listen, str)
        or not isinstance(record.tls_anchor, str | None)
        or not isinstance(record.pid, int)
        or record.pid <= 0
        or not isinstance(record.started_at, str)
        or not isinstance(record.stopped_at, str | None)
    ):
        raise InvalidInput(
            f"{path} is not a keybroker server record: remove it (keybroker serve writes it again), "
            "or give --server",
            field="data_dir",
        )
    return record


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True


# --- choosing the server ---------------------------------------------------------------------------


def check_url(url: str, option: str) -> str:
    """An https:// URL, or http:// to a loopback address (``serve --insecure-http``): an admin
    token is never sent in clear over a network."""
    scheme, host = url.partition("://")[0], None
    try:
        parts = urllib.parse.urlsplit(url)
        host, _ = parts.hostname, parts.port  # .port raises on a port out of range
    except ValueError:
        pass
    if scheme not in ("https", "http") or not host:
        raise InvalidInput(f"{option} {url!r}: expected an https:// URL, e.g. {DEFAULT_URL}", field="server")
    if scheme == "http":
        try:
            loopback = ipaddress.ip_address(host).is_loopback
        except ValueError:
            loopback = host == "localhost"
        if not loopback:
            raise InvalidInput(
                f"{option} {url}: plain http:// only to a loopback address (a server started with "
                "--insecure-http); use https://",
                field="server",
            )
    return url.rstrip("/")


def find_server(
    server: str | None, data_dir: Path | None, ca_file: Path | None, *, server_from_env: bool = False
) -> ServerTarget:
    """The server an operator command talks to and the CA it pins: ``--server`` > ``KEYBROKER_ADDR``
    > ``<data-dir>/server.json`` > the default; ``--ca-file`` > the data dir's TLS anchor > the
    system's CAs."""
    directory = data_dir or Path("data")
    if ca_file is not None and not ca_file.is_file():
        raise InvalidInput(f"--ca-file {ca_file}: no such file", field="ca_file")
    record = None
    note = ""
    if server is not None:
        option = "KEYBROKER_ADDR" if server_from_env else "--server"
        url, origin = check_url(server, option), f"from {option}"
    else:
        record = read_record(directory)
        if record is not None:
            url, origin = (
                check_url(record.url, str(directory / RECORD_FILE)),
                f"recorded in {directory / RECORD_FILE}",
            )
            if record.stopped_at is not None:
                note = f"the keybroker serve that recorded it stopped at {record.stopped_at}"
            elif not _running(record.pid):
                note = f"the keybroker serve that recorded it (pid {record.pid}) is no longer running"
        else:
            url = DEFAULT_URL
            missing = (
                f"no {RECORD_FILE} in {directory}" if directory.is_dir() else f"no directory {directory}"
            )
            origin = f"the default: {missing}"
    if ca_file is None and url.startswith("https://"):
        anchor = directory / (record.tls_anchor if record and record.tls_anchor else "ca/ca.pem")
        ca_file = anchor if anchor.is_file() else None
    return ServerTarget(url=url, ca_file=ca_file, origin=origin, note=note)


def server_client(
    ctx: typer.Context,
    server: str | None,
    ca_file: Path | None,
    data_dir: Path | None,
    token: str | None = None,
) -> ServerClient:
    """A client of the server an operator command names (:func:`find_server`), with ``token``."""
    source = ctx.get_parameter_source("server")
    from_env = source is not None and source.name == "ENVIRONMENT"
    return ServerClient(find_server(server, data_dir, ca_file, server_from_env=from_env), token)
