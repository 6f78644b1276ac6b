"""Shared CLI plumbing: error to exit code mapping, console, server connection, opening the data.

Exit codes of ``keybroker`` (every command): 0 ok; 1 failed (the server refused, a check failed,
sealed in ``operator status``); 2 usage (a bad option or input, a data dir or database without
keybroker data, an address ``serve`` cannot listen on); 3 the server is unreachable (connection
refused, no answer in time, a name that does not resolve, not HTTP(S) at that address); 4 TLS
verification failed (the server's certificate does not verify against the CA given or found).
"""

from __future__ import annotations

import functools
import json
import socket
import ssl
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn, Optional, ParamSpec, TypeVar

import httpx
import typer
from rich.console import Console
from rich.text import Text

from keybroker.errors import InvalidInput, KeybrokerError

if TYPE_CHECKING:  # the database layer loads on use: `keybroker --help` stays quick
    from keybroker.config import Settings
    from keybroker.store.db import Database

console = Console()
err_console = Console(stderr=True)

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_UNREACHABLE, EXIT_TLS = 0, 1, 2, 3, 4
#: For help texts (no square brackets: rich would read them as markup).
EXIT_CODES_HELP = (
    "Exit codes: 0 ok; 1 failed (refused, a check failed); 2 usage (bad option or input, no "
    "keybroker data at the path given, an address serve cannot listen on); 3 server unreachable "
    "(refused, timed out, not found); 4 TLS verification failed."
)

# Options shared by the local operator commands. Help texts never say "[default: ...]" themselves
# (rich reads square brackets as markup and drops them): typer shows show_default and the envvar.
ConfigOpt = Annotated[
    Optional[Path],  # noqa: UP045 - typer needs Optional here
    typer.Option("--config", help="TOML config file", envvar="KEYBROKER_CONFIG", show_envvar=True),
]
DataDirOpt = Annotated[
    Optional[Path],  # noqa: UP045
    typer.Option(
        "--data-dir",
        help="data directory",
        envvar="KEYBROKER_DATA_DIR",
        show_envvar=True,
        show_default="./data",
    ),
]
#: The operator commands' server (``serving.find_server``): its URL and the CA it pins.
ServerOpt = Annotated[
    Optional[str],  # noqa: UP045
    typer.Option(
        "--server",
        envvar="KEYBROKER_ADDR",
        show_envvar=True,
        show_default="the URL in <data-dir>/server.json, else https://127.0.0.1:9443",
        help="the service's URL",
    ),
]
CaOpt = Annotated[
    Optional[Path],  # noqa: UP045
    typer.Option(
        "--ca-file",
        show_default="<data-dir>/ca/ca.pem, else the system CAs",
        help="CA to trust for HTTPS (the server's TLS anchor)",
    ),
]
DatabaseOpt = Annotated[
    Optional[str],  # noqa: UP045
    typer.Option(
        "--database",
        help="SQLAlchemy URL, e.g. postgresql+psycopg://user@host/db",
        envvar="KEYBROKER_DATABASE",
        show_envvar=True,
        show_default="SQLite in the data dir",
    ),
]

P = ParamSpec("P")
R = TypeVar("R")


def fail(message: str, code: int = EXIT_FAILED) -> NoReturn:
    # One line, never wrapped (a path or URL broken across lines cannot be pasted back), and the
    # message is text, not markup: it may quote input with brackets in it.
    err_console.print(Text.assemble(("error:", "red"), " ", message), highlight=False, soft_wrap=True)
    raise typer.Exit(code)


class ServerUnreachable(KeybrokerError):
    """No usable answer from the server: refused, timed out, a name that does not resolve, or no
    HTTP(S) at that address."""

    title = "Server unreachable"
    status = 503
    exit_code = EXIT_UNREACHABLE

    def diagnostics(self) -> str:
        return self.detail


class TlsVerificationFailed(KeybrokerError):
    """The server answered, but its certificate did not verify: a trust problem, not a network one."""

    title = "TLS verification failed"
    status = 503
    exit_code = EXIT_TLS

    def diagnostics(self) -> str:
        return self.detail


def handle_errors(fn: Callable[P, R]) -> Callable[P, R]:
    """Domain errors become a one-line message and an exit code, never a traceback."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        from sqlalchemy.exc import SQLAlchemyError

        try:
            return fn(*args, **kwargs)
        except KeybrokerError as exc:
            fail(exc.diagnostics(), exc.exit_code)
        except httpx.TransportError as exc:
            err = transport_error(exc, _request_url(exc))
            fail(err.diagnostics(), err.exit_code)
        except SQLAlchemyError as exc:
            reason = str(getattr(exc, "orig", None) or type(exc).__name__).splitlines()[0]
            fail(f"database error: {reason}", EXIT_FAILED)

    return wrapper


# --- talking to a server ------------------------------------------------------------------------


def _request_url(exc: httpx.TransportError) -> str:
    try:
        url = exc.request.url
    except RuntimeError:  # raised before a request was built
        return "the server"
    return f"{url.scheme}://{url.netloc.decode('ascii', 'replace')}"


def _cause(exc: BaseException, kind: type[BaseException]) -> BaseException | None:
    """The first exception of ``kind`` in ``exc``'s chain (httpx wraps httpcore's, which wraps the
    socket's or the ssl module's)."""
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        if isinstance(cur, kind):
            return cur
        seen.add(id(cur))
        cur = cur.__cause__ or cur.__context__
    return None


@dataclass(frozen=True)
class ServerTarget:
    """Which server an operator command talks to, and why that one (for the error messages)."""

    url: str
    #: The CA its certificate must chain to; None: the system's CAs.
    ca_file: Path | None
    #: Where the URL came from: "--server", "KEYBROKER_ADDR", "<data-dir>/server.json", "the default".
    origin: str
    #: What else an error message should say (a recorded server that has stopped).
    note: str = ""


#: What the operator commands' errors tell to give instead.
_REMEDY = "give --server URL, or the --data-dir of the running server"
_TLS_REMEDY = "give its TLS anchor with --ca-file (that server's <data-dir>/ca/ca.pem), or the --data-dir of that server"


def transport_error(
    exc: httpx.TransportError, url: str, target: ServerTarget | None = None, timeout: float | None = None
) -> KeybrokerError:
    """What went wrong on the way to ``url``, said so that the operator knows what to do next."""
    where = f"{url} ({target.origin})" if target else url
    note = f"; {target.note}" if target and target.note else ""
    remedy = _REMEDY if target else "check the URL, and that the server is running"
    verify = _cause(exc, ssl.SSLCertVerificationError)
    if isinstance(verify, ssl.SSLCertVerificationError):
        why = verify.verify_message or str(verify)
        trusted = (
            f"trusting {target.ca_file}"
            if target and target.ca_file
            else "trusting the system CAs"
            if target
            else "trusting the CA given (--ca-file) or the system CAs"
        )
        tls_remedy = _TLS_REMEDY if target else "give the CA that signed its certificate with --ca-file"
        return TlsVerificationFailed(
            f"TLS verification failed for {where}: {why}, {trusted}. The server answered but its "
            f"certificate does not verify: {tls_remedy}"
        )
    if isinstance(exc, httpx.TimeoutException):
        within = f" within {timeout:g} s" if timeout else ""
        what = "no connection" if isinstance(exc, httpx.ConnectTimeout) else "no answer"
        return ServerUnreachable(
            f"cannot reach {where}: {what}{within} (a firewall, or a server too busy){note}; {remedy}"
        )
    if _cause(exc, ConnectionRefusedError) is not None:
        return ServerUnreachable(
            f"cannot reach {where}: connection refused, nothing listens there{note}. "
            f"Is keybroker serve running? {remedy[0].upper()}{remedy[1:]}"
        )
    gai = _cause(exc, socket.gaierror)
    if isinstance(gai, socket.gaierror):
        return ServerUnreachable(
            f"cannot reach {where}: the host name does not resolve ({gai.strerror}); {remedy}"
        )
    tls = _cause(exc, ssl.SSLError)
    if isinstance(tls, ssl.SSLError):
        reason = tls.reason or str(tls)
        hint = "; a server started with --insecure-http speaks plain http://" if target else ""
        return ServerUnreachable(f"cannot reach {where}: the TLS handshake failed ({reason}){hint}")
    if isinstance(exc, httpx.RemoteProtocolError):
        hint = "; an HTTPS server? use https://" if url.startswith("http://") else ""
        return ServerUnreachable(f"cannot reach {where}: it does not answer HTTP ({exc}){hint}")
    os_error = _cause(exc, OSError)
    why = (os_error.strerror if isinstance(os_error, OSError) else None) or str(exc) or type(exc).__name__
    return ServerUnreachable(f"cannot reach {where}: {why}{note}; {remedy}")


class ServerClient:
    """A small client for the operator commands (HTTPS pinned to the broker's TLS anchor by default).
    A failed connection raises ServerUnreachable (3) or TlsVerificationFailed (4) naming the URL."""

    def __init__(self, target: ServerTarget, token: str | None = None, timeout: float = 30.0) -> None:
        self.target = target
        self._timeout = timeout
        verify: Any = True
        if target.ca_file is not None:
            try:
                verify = ssl.create_default_context(cafile=str(target.ca_file))
            except (OSError, ssl.SSLError) as exc:
                reason = getattr(exc, "strerror", None) or getattr(exc, "reason", None) or str(exc)
                raise InvalidInput(
                    f"the TLS anchor {target.ca_file} cannot be read as a PEM CA certificate ({reason})",
                    field="ca_file",
                ) from None
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._client = httpx.Client(base_url=target.url, verify=verify, headers=headers, timeout=timeout)

    def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        try:
            resp = self._client.request(method, path, json=body)
        except httpx.TransportError as exc:
            raise transport_error(exc, self.target.url, self.target, self._timeout) from None
        try:
            data = resp.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            data = {"detail": resp.text[:200]}
        if resp.status_code >= 400:
            detail = data.get("detail", resp.reason_phrase) if isinstance(data, dict) else resp.reason_phrase
            code = EXIT_USAGE if resp.status_code in (400, 422) else EXIT_FAILED
            retry = resp.headers.get("retry-after") if resp.status_code == 429 else None
            fail(f"{resp.status_code} {detail}" + (f" (Retry-After: {retry} s)" if retry else ""), code)
        return data if isinstance(data, dict) else {"items": data}


def read_stdin_line() -> str:
    return sys.stdin.readline().strip()


# --- opening an existing keybroker's data ---------------------------------------------------------


class NoKeybrokerData(InvalidInput):
    """A data dir or database the read-only commands were given holds no keybroker data (exit 2)."""

    title = "No keybroker data"

    def diagnostics(self) -> str:
        return self.detail


def no_data(data_dir: Path, why: str) -> NoKeybrokerData:
    return NoKeybrokerData(
        f"no keybroker data at {data_dir} ({why}): give the data dir of a keybroker that has started "
        "(--data-dir, or KEYBROKER_DATA_DIR), or its --database",
        field="data_dir",
    )


def open_existing_database(settings: Settings) -> Database:
    """The database of a keybroker that has run, for the read-only commands: a wrong --data-dir or
    --database creates nothing (no file, no table) and is "no keybroker data" (exit 2)."""
    from sqlalchemy import make_url

    from keybroker.store.db import Database, has_keybroker_schema

    if settings.database is None:
        path = settings.data_dir / "keybroker.db"
        if not settings.data_dir.is_dir():
            raise no_data(settings.data_dir, "no such directory")
        if not path.is_file():
            raise no_data(settings.data_dir, "no keybroker.db in it")
        if not has_keybroker_schema(settings.database_url):
            raise no_data(settings.data_dir, "its keybroker.db holds no keybroker tables")
    else:
        url = make_url(settings.database)
        why = None
        if url.get_backend_name() == "sqlite" and not (url.database and Path(url.database).is_file()):
            why = "no such file"
        elif not has_keybroker_schema(settings.database):
            why = "it holds no keybroker tables"
        if why is not None:
            raise NoKeybrokerData(
                f"no keybroker data in {url.render_as_string(hide_password=True)} ({why}): give the "
                "database keybroker serve uses (--database, KEYBROKER_DATABASE or the config's database)",
                field="database",
            )
    return Database(settings.database_url)
