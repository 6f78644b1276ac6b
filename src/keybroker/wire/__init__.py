"""What both sides of the wire share: the evidence binding and the release envelopes (the workload client imports only this and ``errors``)."""
