"""External test sets (`--test DATA2`): a model tuned and trained on all of DATA, scored on a second cohort
(another site, scanner or period) it never saw. What probe and finetune share: the class check, the
record's `external` block and the protocol name."""

from __future__ import annotations

from medprobe.data.samples import Dataset
from medprobe.errors import MedprobeError
from medprobe.results.schema import CohortInfo, ExternalInfo

EXTERNAL = "external"  # the record's protocol; its file name adds the cohort: ...__external-<name>-seed0
EXTERNAL_FOLD = -1  # the fold index of the one refit on all of DATA (the predictions CSV's fold column)


def matched_test_set(dataset: Dataset, tested: Dataset) -> Dataset:
    """The external cohort with DATA's classes in DATA's order; an error naming any class one has and the
    other lacks (a probe cannot predict a class it never saw, nor be scored on one that is absent)."""
    tested.require_labels()
    unseen = [c for c in tested.classes if c not in dataset.classes]
    absent = [c for c in dataset.classes if c not in tested.classes]
    if unseen or absent:
        parts = ([f"class(es) {', '.join(unseen)} not in {dataset.source}"] if unseen else []) + (
            [f"no sample of {', '.join(absent)}"] if absent else [])
        raise MedprobeError(f"--test {tested.source}: {'; '.join(parts)}; the external test set needs the classes "
                            f"of DATA ({', '.join(dataset.classes)}), relabel it or leave those samples out")
    if tested.key == dataset.key and set(tested.ids) & set(dataset.ids):
        raise MedprobeError(f"--test {tested.source}: it shares images with {dataset.source}; an external test set "
                            "must be other images (another site or cohort)")
    return tested.with_class_order(list(dataset.classes))


def external_block(tested: Dataset, *, internal: str, internal_protocol: str, trained_on: str) -> dict:
    """The record's `external` (results.schema.ExternalInfo)."""
    cohort = CohortInfo(tested.name, str(tested.source), len(tested.samples), dict(tested.class_counts()),
                        any(s.group is not None for s in tested.samples))
    return ExternalInfo(cohort, trained_on, internal_protocol, internal).to_dict()
