"""appraisal."""
