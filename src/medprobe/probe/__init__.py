"""Probes on cached features: classifiers and the probe runner (splits live in data.splits, metrics in
results.metrics, both shared with finetune). Never imports torch."""

from medprobe.stages import make_callable

make_callable(__name__)  # medprobe.probe(...) is medprobe.api.probe(...)
