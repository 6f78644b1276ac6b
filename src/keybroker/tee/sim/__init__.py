"""tee/sim."""
