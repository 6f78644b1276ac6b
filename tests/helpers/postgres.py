"""A throwaway PostgreSQL server on a free loopback port, started from the Debian binaries.

Its cluster lives in shared memory (``/dev/shm``) when there is room: creating a database there
takes milliseconds, on a loaded disk a third of a second. Databases are created and dropped over one
admin connection rather than by ``createdb``/``dropdb`` processes.
"""

from __future__ import annotations

import glob
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import psycopg

#: Where the cluster goes when it has at least this much room (else the default temporary dir).
_SHM = Path("/dev/shm")
_SHM_MIN_FREE = 2 << 30
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_-]{0,62}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def find_bindir() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(found[-1]).parent if found else None


def _scratch_dir() -> str | None:
    """``/dev/shm`` if it is writable and has room, else None (the default temporary dir)."""
    try:
        if os.access(_SHM, os.W_OK) and shutil.disk_usage(_SHM).free >= _SHM_MIN_FREE:
            return str(_SHM)
    except OSError:
        pass
    return None


def _quoted(name: str) -> str:
    if not _NAME.fullmatch(name):
        raise ValueError(f"not a plain database name: {name!r}")
    return f'"{name}"'


@dataclass
class PostgresServer:
    bindir: Path
    datadir: Path
    port: int
    run_as: list[str]
    _admin: psycopg.Connection[tuple[object, ...]] | None = field(default=None, repr=False)

    @property
    def admin_url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def url(self, dbname: str) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{dbname}"

    def admin(self, sql: str) -> None:
        """Run one statement as the superuser on the ``postgres`` database (autocommit, as CREATE
        and DROP DATABASE need)."""
        if self._admin is None or self._admin.closed:
            self._admin = psycopg.connect(
                host="127.0.0.1", port=self.port, user="postgres", dbname="postgres", autocommit=True
            )
        self._admin.execute(sql.encode())

    def create_database(self, name: str, *, template: str | None = None) -> str:
        """Create database ``name`` (empty, or a copy of database ``template``, which must have no
        connections) and return its URL."""
        sql = f"CREATE DATABASE {_quoted(name)}"
        if template is not None:
            sql += f" TEMPLATE {_quoted(template)}"
        self.admin(sql)
        return self.url(name)

    def drop_database(self, name: str) -> None:
        """Drop ``name`` if it exists, ending the connections still open to it."""
        self.admin(f"DROP DATABASE IF EXISTS {_quoted(name)} WITH (FORCE)")

    def stop(self) -> None:
        if self._admin is not None:
            self._admin.close()
        subprocess.run(
            [*self.run_as, str(self.bindir / "pg_ctl"), "-D", str(self.datadir), "-m", "immediate", "stop"],
            capture_output=True,
        )
        shutil.rmtree(self.datadir.parent, ignore_errors=True)

    # --- faults (tests/integration/test_faults.py) ------------------------------------------------

    def shut_down(self, mode: str = "fast") -> None:
        """Stop the server (``pg_ctl stop -m fast|immediate``), keeping its data for :meth:`start_again`."""
        subprocess.run(
            [*self.run_as, str(self.bindir / "pg_ctl"), "-D", str(self.datadir), "-m", mode, "-w", "stop"],
            check=True,
            capture_output=True,
        )

    def start_again(self) -> None:
        """Start the server stopped by :meth:`shut_down` on the same port, and wait until it answers."""
        base = self.datadir.parent
        subprocess.run(
            [
                *self.run_as,
                str(self.bindir / "pg_ctl"),
                "-D",
                str(self.datadir),
                "-l",
                str(base / "server.log"),
                "-w",
                "-o",
                f"-h 127.0.0.1 -p {self.port} -k {base} -c fsync=off",
                "start",
            ],
            check=True,
            capture_output=True,
        )

    def processes(self) -> list[int]:
        """The postmaster and every process it started (backends, checkpointer, WAL writer...)."""
        postmaster = int((self.datadir / "postmaster.pid").read_text().split()[0])
        found = [postmaster]
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                except (OSError, IndexError):
                    continue
                if int(fields[1]) == postmaster:
                    found.append(int(entry.name))
        return found

    def freeze(self) -> list[int]:
        """SIGSTOP the whole server, as a hung machine would be: connections stay open, nothing answers."""
        pids = self.processes()
        for pid in pids:
            os.kill(pid, signal.SIGSTOP)
        return pids

    def thaw(self, pids: list[int]) -> None:
        for pid in pids:
            os.kill(pid, signal.SIGCONT)


def start() -> PostgresServer | None:
    bindir = find_bindir()
    if bindir is None:
        return None
    base = Path(tempfile.mkdtemp(prefix="kb-pg-", dir=_scratch_dir()))
    datadir = base / "data"
    run_as: list[str] = []
    if os.geteuid() == 0:  # PostgreSQL refuses to run as root
        try:
            pw = pwd.getpwnam("postgres")
        except KeyError:
            shutil.rmtree(base, ignore_errors=True)
            return None
        os.chown(base, pw.pw_uid, pw.pw_gid)
        run_as = ["runuser", "-u", "postgres", "--"]
    subprocess.run(
        [*run_as, str(bindir / "initdb"), "-D", str(datadir), "-U", "postgres", "--auth=trust", "-E", "UTF8"],
        check=True,
        capture_output=True,
    )
    port = free_port()
    log = base / "server.log"
    subprocess.run(
        [
            *run_as,
            str(bindir / "pg_ctl"),
            "-D",
            str(datadir),
            "-l",
            str(log),
            "-w",
            "-o",
            f"-h 127.0.0.1 -p {port} -k {base} -c fsync=off",
            "start",
        ],
        check=True,
        capture_output=True,
    )
    server = PostgresServer(bindir, datadir, port, run_as)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return server
        time.sleep(0.2)
    server.stop()
    raise RuntimeError("PostgreSQL did not start; see " + str(log))
