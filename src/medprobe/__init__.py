"""medprobe: which pretrained backbone, frozen or fine-tuned, classifies your medical images best.

The Python API (medprobe/api.py; imported on first use, so `import medprobe` stays cheap):

- extract(data, models=[...], ...) -> list[CacheInfo]: embed images into the HDF5 feature cache
- features(data, model=..., pool="auto") -> FeatureSet: cached features as numpy (torch-free)
- splits(data, folds=5, seed=0) -> SplitPlan: the folds every probe and fine-tune uses
- probe(data, models=..., clf=..., ...) -> list[RunRecord]: probes with validation search and bootstrap CIs
- finetune(data, model=..., ...) -> RunRecord: unfrozen training on the same splits
- report(results, out=...) -> Report: tables, leaderboard and figures from run records
- load_results(folder) -> pandas.DataFrame: one row per run record (the columns of summary.csv)
- MedprobeError: what bad input raises, with the CLI's one-line message

medprobe.probes holds the probes as scikit-learn estimators (LogisticProbe, SVMProbe, KNNProbe).
extract, probe, finetune and report are also the stages' packages (medprobe.probe.runner, ...): calling the
package calls the API function (medprobe/stages.py); `from medprobe.api import probe` gives the function.
"""

from medprobe.errors import Interrupted, MedprobeError

__version__ = "0.1.0"

_API = ("CacheInfo", "FeatureSet", "features", "load_results", "splits")  # medprobe.api's, loaded on first use
_STAGES = ("extract", "finetune", "probe", "report")  # callable stage packages (medprobe/stages.py)
_TYPES = {"RunRecord": "medprobe.report.records", "SplitPlan": "medprobe.data.splits",
          "Dataset": "medprobe.data.samples"}

__all__ = ["Interrupted", "MedprobeError", "__version__", *_API, *_STAGES, *_TYPES]


def __getattr__(name: str):
    import importlib

    if name in _API:
        return getattr(importlib.import_module("medprobe.api"), name)
    if name in _STAGES:
        return importlib.import_module(f"medprobe.{name}")
    if name in _TYPES:
        return getattr(importlib.import_module(_TYPES[name]), name)
    raise AttributeError(f"module 'medprobe' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
