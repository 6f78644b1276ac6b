"""Key-store selection: the ``[keystore]`` section, a tagged union on ``type``.

```toml
[keystore]
type = "vault"            # builtin | vault | kmip | pkcs11
address = "https://vault.example:8200"
ca_file = "/etc/keybroker/vault-ca.pem"
auth = { method = "approle", role_id = "...", secret_id_file = "/run/secrets/kb-secret-id" }
```

Secrets (tokens, AppRole secret ids, PINs) can be given inline or, better, as a file path; exactly
one of the two. ``docs/keystores.md`` has an example for every backend.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, RootModel, SecretStr, model_validator


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _one_of(inline: SecretStr | None, file: Path | None, what: str) -> None:
    if (inline is None) == (file is None):
        raise ValueError(f"give exactly one of {what} and {what}_file")


def read_secret(inline: SecretStr | None, file: Path | None) -> str:
    """The secret from the inline value or the file (trailing newline stripped)."""
    if inline is not None:
        return inline.get_secret_value()
    assert file is not None
    return file.read_text().strip()


class BuiltinKeystore(_Section):
    """Keys sealed in the database under the barrier's root key (the default)."""

    type: Literal["builtin"] = "builtin"


class VaultTokenAuth(_Section):
    method: Literal["token"] = "token"
    #: The token itself. None: read it from ``token_file``.
    token: SecretStr | None = None
    #: A file holding the token. None: ``token`` is given inline.
    token_file: Path | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> VaultTokenAuth:
        _one_of(self.token, self.token_file, "token")
        return self


class VaultAppRoleAuth(_Section):
    method: Literal["approle"]
    role_id: str = Field(min_length=1)
    #: The AppRole secret id. None: read it from ``secret_id_file``.
    secret_id: SecretStr | None = None
    secret_id_file: Path | None = None
    #: Where the AppRole auth method is mounted.
    mount: str = "approle"

    @model_validator(mode="after")
    def _exactly_one(self) -> VaultAppRoleAuth:
        _one_of(self.secret_id, self.secret_id_file, "secret_id")
        return self


class VaultConnection(_Section):
    """How to reach and log in to HashiCorp Vault or OpenBao (shared by the key store and the
    Transit seal)."""

    #: ``https://host:8200``. Plain ``http://`` is accepted only for a loopback address.
    address: str = Field(min_length=1)
    #: CA bundle that alone verifies the server (pinning). None: the system trust store.
    ca_file: Path | None = None
    #: Client certificate and key for TLS client auth. None: no client certificate is sent.
    client_cert: Path | None = None
    client_key: Path | None = None
    #: Vault Enterprise / OpenBao namespace, e.g. ``team-a``. None: the root namespace.
    namespace: str | None = None
    #: ``{ method = "token", token_file = ... }`` or ``{ method = "approle", role_id = ..., ... }``.
    auth: Annotated[VaultTokenAuth | VaultAppRoleAuth, Field(discriminator="method")]
    #: Upper bound for one HTTP request (connect and read), seconds.
    timeout_seconds: float = Field(default=5.0, gt=0, le=120)

    @model_validator(mode="after")
    def _check(self) -> VaultConnection:
        if not self.address.startswith(("https://", "http://")):
            raise ValueError("address must start with https:// (or http:// on loopback)")
        if (self.client_cert is None) != (self.client_key is None):
            raise ValueError("give both client_cert and client_key, or neither")
        return self


class VaultKeystore(VaultConnection):
    """Keys kept as KV version 2 secrets, one per key: ``<mount>/data/<path_prefix>/<key id>``."""

    type: Literal["vault"]
    #: KV v2 mount (the seed's ``vault secrets enable -path=keybroker kv-v2``).
    mount: str = "keybroker"
    #: Folder under the mount for keys that keybroker creates.
    path_prefix: str = "keys"


class KmipKeystore(_Section):
    """A KMIP server over mutual TLS (PyKMIP client)."""

    type: Literal["kmip"]
    host: str = Field(min_length=1)
    port: int = Field(default=5696, gt=0, lt=65536)
    #: CA bundle that alone verifies the KMIP server (required: KMIP is always mutual TLS).
    ca_file: Path
    #: keybroker's client certificate (with the clientAuth extended key usage) and its key.
    client_cert: Path
    client_key: Path
    #: Name checked against the server certificate. None: ``host``.
    server_name: str | None = None
    #: KMIP protocol version. None: the newest both sides speak, found by Discover Versions.
    kmip_version: Literal["1.2", "1.3", "1.4", "2.0"] | None = None
    #: Upper bound for connecting and for each request, seconds.
    timeout_seconds: float = Field(default=5.0, gt=0, le=120)


class Pkcs11Token(_Section):
    """A PKCS#11 token (shared by the key store and the PKCS#11 seal)."""

    #: The vendor's PKCS#11 module, e.g. ``/usr/lib/softhsm/libsofthsm2.so``.
    library: Path
    #: Token label (``CKA_LABEL`` of the token, as ``pkcs11-tool -L`` shows it).
    token_label: str = Field(min_length=1)
    #: User PIN. None: read it from ``pin_file``.
    pin: SecretStr | None = None
    pin_file: Path | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> Pkcs11Token:
        _one_of(self.pin, self.pin_file, "pin")
        return self


class Pkcs11Keystore(Pkcs11Token):
    """Keys generated in an HSM; released by wrapping inside it (see docs/keystores.md)."""

    type: Literal["pkcs11"]
    #: True: new keys are ``CKA_SENSITIVE`` (their value never leaves the token in plaintext; release
    #: wraps them inside the HSM). False: they may also be read out, e.g. for self-signed certificates.
    sensitive: bool = True


KeystoreVariant = Annotated[
    BuiltinKeystore | VaultKeystore | KmipKeystore | Pkcs11Keystore, Field(discriminator="type")
]


class KeystoreSettings(RootModel[KeystoreVariant]):
    """``[keystore]``: one of the variants above, chosen by ``type``. Absent: builtin."""

    root: KeystoreVariant = Field(default_factory=BuiltinKeystore)

    @property
    def type(self) -> str:
        return self.root.type
