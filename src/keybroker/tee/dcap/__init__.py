"""tee/dcap."""
