"""Unfrozen training of the same backbones on the same splits as the probes (reuses data, models and
results; never the cache)."""
