"""collateral."""
