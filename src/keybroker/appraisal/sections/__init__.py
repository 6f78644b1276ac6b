"""The transfer policy's per-TEE sections: one module per TEE, registered in ``appraisal.registry``."""
