"""The web console at ``/ui``: server-rendered pages on the API's listener (docs/console.md)."""

from __future__ import annotations

from fastapi import FastAPI

from keybroker.api.services import Services


def install(app: FastAPI, services: Services) -> None:
    """Add the console's routes and its session store to ``app``."""
    from keybroker.ui import admin, attestation, pages
    from keybroker.ui.sessions import SessionStore

    app.state.console_sessions = SessionStore(services.db, services.settings.console)
    app.include_router(pages.router)
    app.include_router(admin.router)
    app.include_router(attestation.router)
