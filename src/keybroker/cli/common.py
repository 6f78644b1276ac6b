"""Shared CLI plumbing: error to exit code mapping, console, server connection."""

from __future__ import annotations

import functools
import json
import ssl
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, NoReturn, Optional, ParamSpec, TypeVar

import httpx
import typer
from rich.console import Console
from rich.text import Text

from keybroker.errors import KeybrokerError

console = Console()
err_console = Console(stderr=True)

# Options shared by the local operator commands. Help texts say "(default: ...)", never "[default:
# ...]": rich reads square brackets as markup and drops them.
ConfigOpt = Annotated[
    Optional[Path],  # noqa: UP045 - typer needs Optional here
    typer.Option("--config", help="TOML config file", envvar="KEYBROKER_CONFIG"),
]
DataDirOpt = Annotated[
    Optional[Path],  # noqa: UP045
    typer.Option("--data-dir", help="data directory (default: ./data)", envvar="KEYBROKER_DATA_DIR"),
]
DatabaseOpt = Annotated[
    Optional[str],  # noqa: UP045
    typer.Option(
        "--database",
        help="SQLAlchemy URL, e.g. postgresql+psycopg://user@host/db (default: SQLite in the data dir)",
        envvar="KEYBROKER_DATABASE",
    ),
]

P = ParamSpec("P")
R = TypeVar("R")

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_UNREACHABLE = 0, 1, 2, 3


def fail(message: str, code: int = EXIT_FAILED) -> NoReturn:
    # One line, never wrapped (a path or URL broken across lines cannot be pasted back), and the
    # message is text, not markup: it may quote input with brackets in it.
    err_console.print(Text.assemble(("error:", "red"), " ", message), highlight=False, soft_wrap=True)
    raise typer.Exit(code)


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
            fail(f"cannot reach the server: {exc or type(exc).__name__}", EXIT_UNREACHABLE)
        except SQLAlchemyError as exc:
            reason = str(getattr(exc, "orig", None) or type(exc).__name__).splitlines()[0]
            fail(f"database error: {reason}", EXIT_FAILED)

    return wrapper


class ServerClient:
    """A small client for the operator commands (HTTPS pinned to the broker's TLS anchor by default)."""

    def __init__(self, url: str, ca_file: Path | None, token: str | None = None) -> None:
        verify: Any = ssl.create_default_context(cafile=str(ca_file)) if ca_file is not None else True
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._client = httpx.Client(base_url=url, verify=verify, headers=headers, timeout=30.0)

    def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        resp = self._client.request(method, path, json=body)
        try:
            data = resp.json()
        except json.JSONDecodeError:
            data = {"detail": resp.text[:200]}
        if resp.status_code >= 400:
            detail = data.get("detail", resp.reason_phrase) if isinstance(data, dict) else resp.reason_phrase
            code = EXIT_USAGE if resp.status_code in (400, 422) else EXIT_FAILED
            retry = resp.headers.get("retry-after") if resp.status_code == 429 else None
            fail(f"{resp.status_code} {detail}" + (f" (Retry-After: {retry} s)" if retry else ""), code)
        return data if isinstance(data, dict) else {"items": data}


def read_stdin_line() -> str:
    return sys.stdin.readline().strip()
