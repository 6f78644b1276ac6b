"""keystores."""
