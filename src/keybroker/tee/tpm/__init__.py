"""TPM 2.0 attestation, verified in pure Python with pyca/cryptography.

``abi`` parses TPMS_ATTEST, TPMT_SIGNATURE and TPMT_PUBLIC (no trust), ``verify`` checks a quote
(AK restrictions and certificate, signature, nonce, PCR selection and digest), ``eventlog`` parses
and replays a TCG PC Client crypto-agile event log against quoted PCRs, ``credential`` makes the
TPM2_MakeCredential challenge that binds an AK to an EK, ``certs`` verifies AK and EK certificates
to configured roots. Time, roots and nonces are always injected. Policy lives elsewhere.
"""

from __future__ import annotations
