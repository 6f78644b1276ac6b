"""keybroker: a Key Broker Service and Attestation Service for confidential computing."""

from __future__ import annotations

__version__ = "0.1.0"
