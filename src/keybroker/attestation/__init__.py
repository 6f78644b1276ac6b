"""The attestation service: challenge nonces, attestation results (EAR JWTs), their signing keys, remote attestation services."""
