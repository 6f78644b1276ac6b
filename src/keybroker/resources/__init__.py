"""The Confidential Containers KBS protocol (``/kbs/v0``): sessions, attestation, resources."""
