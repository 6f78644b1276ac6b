"""Every command of ``keybroker`` and ``keybroker-client`` renders its ``--help`` cleanly: no reST
``double backticks`` from docstrings, no stray " ." left where rich took a ``[default: ...]`` for
markup, and no help text that loses characters to rich markup."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest
import typer
from rich.errors import MarkupError
from rich.markup import render
from typer.testing import CliRunner

from keybroker.cli.client import app as client_app
from keybroker.cli.main import app as server_app

APPS = {"keybroker": server_app, "keybroker-client": client_app}

KNOWN_BAD_OUTPUT: set[tuple[str, ...]] = set()
KNOWN_BAD_MARKUP: set[tuple[str, ...]] = set()


def _walk(command: Any, path: tuple[str, ...]) -> Iterator[tuple[tuple[str, ...], Any]]:
    yield path, command
    for name, sub in sorted(getattr(command, "commands", {}).items()):
        yield from _walk(sub, (*path, name))


def _commands(known_bad: set[tuple[str, ...]]) -> list[Any]:
    out = []
    for prog, app in APPS.items():
        for path, command in _walk(typer.main.get_command(app), ()):
            key = (prog, *path)
            marks = (
                [pytest.mark.xfail(strict=True, reason="help text outside the client's area")]
                if key in known_bad
                else []
            )
            out.append(pytest.param(prog, path, command, id=" ".join(key), marks=marks))
    return out


def _texts(command: Any) -> Iterator[tuple[str, str]]:
    if command.help:
        yield "help", command.help
    if getattr(command, "epilog", None):
        yield "epilog", command.epilog
    for param in command.params:
        if getattr(param, "help", None):
            yield f"{param.name} help", param.help


def test_the_walk_finds_every_command() -> None:
    names = {" ".join((p.values[0], *p.values[1])) for p in _commands(set())}  # type: ignore[arg-type]
    assert {"keybroker-client evidence", "keybroker-client get-key", "keybroker dev-pki init"} <= names
    assert {"keybroker version", "keybroker-client version", "keybroker dev-pki refresh"} <= names


@pytest.mark.parametrize(("prog", "path", "command"), _commands(KNOWN_BAD_OUTPUT))
def test_help_output_is_clean(prog: str, path: tuple[str, ...], command: Any) -> None:
    result = CliRunner().invoke(APPS[prog], [*path, "--help"], env={"COLUMNS": "200", "NO_COLOR": "1"})
    assert result.exit_code == 0, result.output
    assert "``" not in result.output, result.output
    assert not re.search(r" \.(\s|$)", result.output), result.output  # a stray " ." ("./data" is fine)


@pytest.mark.parametrize(("prog", "path", "command"), _commands(KNOWN_BAD_MARKUP))
def test_help_texts_survive_rich_markup(prog: str, path: tuple[str, ...], command: Any) -> None:
    for where, text in _texts(command):
        try:
            plain = render(text).plain
        except MarkupError as exc:
            pytest.fail(f"{where} of {prog} {' '.join(path)} is not valid rich markup: {exc}")
        assert plain == text.replace("\\[", "["), f"rich markup eats part of the {where}: {text!r}"
