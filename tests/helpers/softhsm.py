"""A SoftHSM2 token in a temp dir (``SOFTHSM2_CONF`` points at its own config).

SoftHSM is a library, not a server: an "outage" is simulated by moving the token directory away
(operations fail with CKR_GENERAL_ERROR, as when a network HSM or a USB token disappears) and
moving it back; keybroker must then re-initialize the module by itself.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

LIBRARY_CANDIDATES = (
    "/usr/lib/softhsm/libsofthsm2.so",
    "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so",
)
USER_PIN = "1234"
SO_PIN = "5678"


def library() -> Path | None:
    for c in LIBRARY_CANDIDATES:
        if Path(c).exists() and shutil.which("softhsm2-util"):
            return Path(c)
    return None


@dataclass
class SoftHsm:
    base: Path
    library: Path
    label: str

    @property
    def tokens(self) -> Path:
        return self.base / "tokens"

    def pull(self) -> None:
        """The token disappears."""
        self.tokens.rename(self.base / "tokens.away")

    def plug(self) -> None:
        """The token is back."""
        (self.base / "tokens.away").rename(self.tokens)

    def pin_file(self) -> Path:
        p = self.base / "pin"
        p.write_text(USER_PIN + "\n")
        p.chmod(0o600)
        return p


def make(base: Path, label: str = "keybroker") -> SoftHsm:
    """Initialize a token labelled ``label``. Sets ``SOFTHSM2_CONF`` for this process (the module
    reads it when it is loaded; every test token of a session lives in the same directory)."""
    lib = library()
    assert lib is not None
    conf = os.environ.get("SOFTHSM2_CONF")
    if conf is None or not Path(conf).exists():
        base.mkdir(parents=True, exist_ok=True)
        (base / "tokens").mkdir(exist_ok=True)
        conf_path = base / "softhsm2.conf"
        conf_path.write_text(
            f"directories.tokendir = {base / 'tokens'}\nobjectstore.backend = file\nlog.level = ERROR\n"
        )
        os.environ["SOFTHSM2_CONF"] = str(conf_path)
    else:
        base = Path(conf).parent
    subprocess.run(
        ["softhsm2-util", "--init-token", "--free", "--label", label, "--so-pin", SO_PIN, "--pin", USER_PIN],
        check=True,
        capture_output=True,
    )
    return SoftHsm(base, lib, label)
