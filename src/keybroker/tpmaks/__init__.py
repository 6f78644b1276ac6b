"""TPM attestation keys in the database: enrolment through the EK (``TPM2_MakeCredential`` here,
``TPM2_ActivateCredential`` in the machine's TPM), approval and revocation, and the latest clock
seen per AK. ``store`` is the verifier's registry (``tee.tpm.trust.AkRegistry``); ``service`` the
enrolment and administration use cases, each one transaction with its audit record."""
