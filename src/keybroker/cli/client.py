"""``keybroker-client``: the workload side. Commands arrive as they work."""

from __future__ import annotations

import typer

from keybroker import __version__
from keybroker.cli import client_evidence

app = typer.Typer(
    name="keybroker-client",
    help="keybroker workload client: obtains evidence inside a TEE and fetches keys.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


client_evidence.register(app)


@app.command()
def version() -> None:
    """Print the version."""
    typer.echo(f"keybroker-client {__version__}")
