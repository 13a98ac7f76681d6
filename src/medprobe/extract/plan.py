"""Whether an extraction has anything to do, answered from the cache alone: its attributes and the image
files' stats, with no torch import (a rerun on a complete cache says "up to date" in well under a second,
and works where torch is not installed).

A cache file's name hashes the backbone's preprocessing (read through timm or transformers, which import
torch) and the *resolved* precision (for `--precision auto`, bf16 where the hardware supports it, which
only torch knows). So instead of computing the name, the answer comes from a cache of this backbone that
records the same request: the model identity and weights, image size, decode path and precision, and
for `auto` the same device request on the same host. Anything less certain returns None, and the full
plan (extract/runner.py, with torch) decides.
"""

from __future__ import annotations

import socket
from pathlib import Path

from medprobe.cache import list_cache_files, plan_rows, read_contents
from medprobe.cache.journal import Journal
from medprobe.data.samples import Dataset
from medprobe.data.signature import unchanged_records
from medprobe.extract.settings import CacheInfo, ExtractSettings
from medprobe.models.identity import weights_identity
from medprobe.models.registry import resolve_model
from medprobe.models.spec import ModelSpec

AUTO_KEYS = ("device", "host")  # what else must match when the precision was resolved on the hardware


def requested(spec: ModelSpec, settings: ExtractSettings) -> dict:
    """The request a cache records, so a later rerun can find it without torch."""
    return {"model": spec.cache_identity(), "device": settings.device, "precision": settings.precision,
            "image_size": settings.image_size, "decode": settings.decode, "host": socket.gethostname()}


def answers_request(attrs: dict, wanted: dict) -> bool:
    """Whether a cache with these attributes is the one `wanted` would write."""
    made_for = attrs.get("requested") or {}
    auto = wanted["precision"] == "auto"
    keys = ("model", "image_size", "decode") + (AUTO_KEYS + ("precision",) if auto else ())
    if any(made_for.get(key, "missing") != wanted[key] for key in keys):
        return False
    return auto or attrs.get("precision") == wanted["precision"]


def answer_from_cache(dataset: Dataset, model: str, cache_dir: Path, settings: ExtractSettings) -> CacheInfo | None:
    """The report of an extraction with nothing to do, or None when only the full plan can tell."""
    spec = resolve_model(model, revision=settings.revision)
    known_identity = weights_identity(spec)
    if known_identity is None:  # a hub model not yet in the local hub cache
        return None
    wanted = requested(spec, settings)
    answers = []
    for path in list_cache_files(cache_dir, dataset.cache_slug, spec.slug):
        if Journal(path).batches():  # a killed run's batches: the full plan commits them
            continue
        contents = read_contents(path)
        if contents.attrs.get("weights_identity") != known_identity or not answers_request(contents.attrs, wanted):
            continue
        skipped = unchanged_records(dict(contents.attrs.get("skipped") or {}), dataset.samples, dataset.root) \
            if settings.skip_bad else {}
        plan = plan_rows(contents, [s for s in dataset.samples if s.id not in skipped], dataset.root)
        if not (plan.up_to_date and not plan.restat):
            return None  # the cache this request writes is behind
        answers.append(CacheInfo(spec.name, path, 0, plan.fresh, 0, None, skipped=skipped))
    return answers[0] if len(answers) == 1 else None


def up_to_date_reports(dataset: Dataset, models: list[str], cache_dir: Path,
                       settings: ExtractSettings) -> list[CacheInfo] | None:
    """Every backbone's report when none has anything to do (decided without torch), else None."""
    answers = [answer_from_cache(dataset, name, cache_dir, settings) for name in models]
    return answers if all(answer is not None for answer in answers) else None
