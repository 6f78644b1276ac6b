"""The data dir: private to the user the service runs as.

It holds the TLS and issuing CAs' keys, the token signing key, the SQLite database (the sealed key
store, the audit log), ``server.json`` (where ``serve`` listens, for the operator commands) and,
with ``--dev``, the unseal key. ``keybroker serve`` and the local operator
commands that write it run with umask 077, so every file they or their libraries (SQLite's WAL and
shared-memory files) create is 0600 and every directory 0700, whatever the mode of a data dir that
already existed. A data dir open to group or others is reported, not changed: its mode is the
operator's to set.
"""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

log = logging.getLogger("keybroker")

#: Files 0600, directories 0700.
PRIVATE_UMASK = 0o077


def restrict_umask() -> None:
    """From now on, this process creates files 0600 and directories 0700 (for ``keybroker serve``
    and the CLI commands that write the data dir; a process-wide setting, so not for library use)."""
    os.umask(PRIVATE_UMASK)


def prepare(data_dir: Path) -> None:
    """Create ``data_dir`` (0700) if needed; warn once when group or others may enter or read it."""
    data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    mode = stat.S_IMODE(data_dir.stat().st_mode)
    if mode & 0o077:
        log.warning(
            "the data dir %s is open to group or others (mode %04o); it holds private keys and the key "
            "store: chmod 700 it (files created in it are 0600 regardless)",
            data_dir,
            mode,
        )
