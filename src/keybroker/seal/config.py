"""``[seal]``: how the unseal key is protected (Shamir shares by default, or auto-unseal).

```toml
[seal]
type = "transit"
address = "https://vault.example:8200"
ca_file = "/etc/keybroker/vault-ca.pem"
auth = { method = "approle", role_id = "...", secret_id_file = "/run/secrets/kb-seal-secret-id" }
key_name = "keybroker-unseal"
```
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, RootModel

from keybroker.keystores.config import Pkcs11Token, VaultConnection


class ShamirSeal(BaseModel):
    """No auto-unseal: the unseal key is split into unseal shares (the default)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    type: Literal["shamir"] = "shamir"


class Pkcs11SealSettings(Pkcs11Token):
    type: Literal["pkcs11"]
    #: ``CKA_LABEL`` of the AES-256 seal key. Created at ``operator init`` when absent.
    key_label: str = Field(default="keybroker-unseal", min_length=1)


class TransitSealSettings(VaultConnection):
    type: Literal["transit"]
    #: Where the Transit engine is mounted.
    mount: str = "transit"
    #: Transit key name (create it first: ``bao write -f transit/keys/keybroker-unseal``).
    key_name: str = Field(default="keybroker-unseal", min_length=1)


SealVariant = Annotated[ShamirSeal | Pkcs11SealSettings | TransitSealSettings, Field(discriminator="type")]


class SealSettings(RootModel[SealVariant]):
    """``[seal]``: how the unseal key is protected. Absent: Shamir unseal shares."""

    root: SealVariant = Field(default_factory=ShamirSeal)
