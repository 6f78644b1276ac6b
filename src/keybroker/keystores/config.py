"""Key-store selection (``[keystore]`` in the config file)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict


class KeystoreSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["builtin"] = "builtin"
