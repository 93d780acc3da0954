"""The stages in order, idempotent on a run directory: the reproduction (``reproduce``), the
baselines, the adaptive attacks and the ablations."""
