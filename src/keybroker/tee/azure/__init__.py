"""Azure confidential VMs (SEV-SNP and TDX) attested through their paravisor's vTPM.

``hcl`` parses the HCL report (hardware report slot, runtime data with HCLAkPub), ``evidence`` reads
Trustee's JSON evidence forms, ``verify`` checks the chain: the hardware report (verified by an
injected verifier: ``tee.snp`` or ``tee.dcap``) binds the runtime data, whose HCLAkPub signs the
vTPM quote carrying the nonce.
"""

from __future__ import annotations
