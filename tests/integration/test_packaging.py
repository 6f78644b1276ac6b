"""packaging/: the systemd unit (``systemd-analyze verify``, its hardening, its command line run for
real) and the container image definition (multi-stage, non-root, the data dir a volume, a health
check on /readyz that is run against real servers; built only where a container builder runs:
none does on the development machine, where ``docker`` is a client without a daemon)."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from tests.helpers.postgres import free_port
from tests.helpers.server import Server

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "packaging" / "keybroker.service"
CONTAINERFILE = ROOT / "packaging" / "Containerfile"
BIN = Path(sys.executable).parent
DATA = "/var/lib/keybroker"


def _unit() -> dict[str, list[str]]:
    settings: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        if line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            settings.setdefault(key, []).append(value)
    return settings


def _local_unit(tmp_path: Path) -> Path:
    """The unit with its program at this checkout's keybroker (verify checks that it is executable)."""
    text = UNIT.read_text().replace("/opt/keybroker/bin/keybroker", str(BIN / "keybroker"))
    path = tmp_path / "keybroker.service"
    path.write_text(text)
    return path


def test_the_unit_is_hardened() -> None:
    unit = _unit()
    for key, value in {
        "ProtectSystem": "strict",
        "NoNewPrivileges": "yes",
        "PrivateTmp": "yes",
        "CapabilityBoundingSet": "",
        "AmbientCapabilities": "",
        "StateDirectory": "keybroker",
        "StateDirectoryMode": "0700",
        "UMask": "0077",
        "User": "keybroker",
    }.items():
        assert unit.get(key) == [value], (key, unit.get(key))
    assert DATA in unit["ExecStart"][0]  # the data dir is the state directory


def test_systemd_analyze_verify(tmp_path: Path) -> None:
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed (Debian package systemd; make test installs it)")
    unit = _local_unit(tmp_path)
    r = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, cwd=tmp_path)
    # a misspelt directive is only a warning ("Unknown key ..., ignoring"): nothing may be printed
    assert r.returncode == 0 and r.stderr.strip() == "" and r.stdout.strip() == "", r.stdout + r.stderr
    r = subprocess.run(
        ["systemd-analyze", "security", "--offline=yes", str(unit)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    found = re.search(r"Overall exposure level for keybroker\.service: (\d+\.\d+)", r.stdout + r.stderr)
    assert found is not None, r.stdout + r.stderr
    assert float(found.group(1)) <= 2.0, r.stdout  # systemd rates <= 2 "OK"


def test_the_units_command_line_serves(tmp_path: Path) -> None:
    """ExecStart as written (its options exist and fit together), with this checkout's program, a
    temporary config and data dir, and a free port."""
    argv = shlex.split(_unit()["ExecStart"][0])
    assert argv[0] == "/opt/keybroker/bin/keybroker" and argv[1] == "serve"
    config = tmp_path / "keybroker.toml"
    config.write_text("")  # no setting: SQLite in the data dir, Shamir unseal shares
    port = free_port()
    args = [
        {
            "/etc/keybroker/keybroker.toml": str(config),
            DATA: str(tmp_path / "data"),
            "0.0.0.0:9443": f"127.0.0.1:{port}",
        }.get(a, a)
        for a in argv[1:]
    ]
    server = Server(tmp_path / "data", port=port, argv=args).start()
    try:
        with server.client() as c:
            assert c.get("/healthz").json() == {"status": "ok"}
            assert c.get("/readyz").status_code == 503  # not initialized
    finally:
        server.stop()


def _stages() -> list[list[str]]:
    stages: list[list[str]] = []
    for line in re.sub(r"\\\n", " ", CONTAINERFILE.read_text()).splitlines():
        if line.startswith("FROM "):
            stages.append([])
        if stages and line and not line.startswith("#"):
            stages[-1].append(line)
    return stages


def test_the_image_definition() -> None:
    stages = _stages()
    assert len(stages) >= 2, "multi-stage: build tools stay out of the image"
    final = stages[-1]
    assert not any(line.startswith(("RUN pip", "RUN /opt/keybroker/bin/pip")) for line in final)
    user = [line.split()[1] for line in final if line.startswith("USER ")]
    assert user and user[-1].split(":")[0] not in ("0", "root"), user
    assert f'VOLUME ["{DATA}"]' in final
    assert any(f"KEYBROKER_DATA_DIR={DATA}" in line for line in final)
    assert any(line.startswith("HEALTHCHECK ") and "/readyz" in line for line in final)
    assert final[-1] == 'ENTRYPOINT ["keybroker", "serve"]'
    ignore = (CONTAINERFILE.parent / "Containerfile.dockerignore").read_text().splitlines()
    assert {"*", "!pyproject.toml", "!README.md", "!src"} <= set(ignore)  # no .venv or data dir sent


def _healthcheck(data_dir: Path) -> subprocess.CompletedProcess[str]:
    line = next(line for line in _stages()[-1] if line.startswith("HEALTHCHECK "))
    argv = json.loads(line[line.index("CMD ") + 4 :])
    assert argv[:2] == ["python3", "-c"]
    code = argv[2].replace(f"'{DATA}/'", repr(f"{data_dir}/"))
    assert code != argv[2]
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)


def test_the_health_check_follows_readyz(tmp_path: Path) -> None:
    sealed = Server(tmp_path / "sealed").start()  # not initialized: /readyz 503
    try:
        assert _healthcheck(sealed.data_dir).returncode == 1
    finally:
        sealed.stop()
    ready = Server(tmp_path / "ready", extra=["--dev"]).start()
    try:
        r = _healthcheck(ready.data_dir)
        assert r.returncode == 0, r.stderr
    finally:
        ready.stop()
    assert _healthcheck(ready.data_dir).returncode == 1  # stopped


def _builder() -> list[str] | None:
    for tool in ("podman", "buildah", "docker"):
        if shutil.which(tool) is None:
            continue
        probe = ["docker", "info"] if tool == "docker" else [tool, "info"]
        if subprocess.run(probe, capture_output=True, timeout=30).returncode == 0:
            return [tool, "build"] if tool != "buildah" else [tool, "bud"]
    return None


def test_the_image_builds() -> None:
    builder = _builder()
    if builder is None:
        pytest.skip(
            "no container builder runs here (podman and buildah absent; docker, if present, has no daemon): "
            "the image is checked statically and its health check against real servers"
        )
    r = subprocess.run(
        [*builder, "-f", str(CONTAINERFILE), "-t", "keybroker-test:latest", str(ROOT)],
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
