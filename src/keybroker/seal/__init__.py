"""seal."""
