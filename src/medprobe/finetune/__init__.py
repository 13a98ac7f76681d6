"""Unfrozen training of the same backbones on the same splits as the probes (reuses data, models and
results; never the cache)."""

from medprobe.stages import make_callable

make_callable(__name__)  # medprobe.finetune(...) is medprobe.api.finetune(...)
