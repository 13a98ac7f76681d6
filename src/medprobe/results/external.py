"""External test sets (`--test DATA2`): a model tuned and trained on all of DATA, scored on a second cohort
(another site, scanner or period) it never saw. What probe and finetune share: the class check, the
record's `external` block and the protocol name."""

from __future__ import annotations

from dataclasses import replace

from medprobe.data.samples import Dataset
from medprobe.errors import MedprobeError
from medprobe.results.metrics import group_codes
from medprobe.results.schema import CohortInfo, ExternalInfo, FoldSize

EXTERNAL = "external"  # the record's protocol; its file name adds the cohort: ...__external-<name>-seed0
EXTERNAL_FOLD = -1  # the fold index of the one refit on all of DATA (the predictions CSV's fold column)


def matched_test_set(dataset: Dataset, tested: Dataset) -> Dataset:
    """The external cohort with DATA's classes in DATA's order; an error naming any class one has and the
    other lacks (a probe cannot predict a class it never saw, nor be scored on one that is absent)."""
    tested.require_labels()
    if dataset.multilabel != tested.multilabel:
        kind = {True: "multi-label", False: "single-label"}
        raise MedprobeError(f"--test {tested.source} is {kind[tested.multilabel]} but {dataset.source} is "
                            f"{kind[dataset.multilabel]}; the external cohort needs DATA's kind of labels")
    what, some, plural = ("finding", "finding(s)", "findings") if dataset.multilabel else ("class", "class(es)",
                                                                                          "classes")
    unseen = [c for c in tested.classes if c not in dataset.classes]
    absent = [c for c in dataset.classes if c not in tested.classes]
    if unseen or absent:
        parts = ([f"{some} {', '.join(unseen)} not in {dataset.source}"] if unseen else []) + (
            [f"no {what} {', '.join(absent)}" if dataset.multilabel else f"no sample of {', '.join(absent)}"]
            if absent else [])
        fix = ("label them alike (a finding no image has: a 0/1 column in a spec's labels = [...])"
               if dataset.multilabel else "relabel it or leave those samples out")
        raise MedprobeError(f"--test {tested.source}: {'; '.join(parts)}; the external test set needs the "
                            f"{plural} of DATA ({', '.join(dataset.classes)}), {fix}")
    if tested.key == dataset.key and set(tested.ids) & set(dataset.ids):
        raise MedprobeError(f"--test {tested.source}: it shares images with {dataset.source}; an external test set "
                            "must be other images (another site or cohort)")
    if dataset.multilabel:
        return tested.with_finding_order(list(dataset.findings))
    return tested.with_class_order(list(dataset.classes))


def external_block(tested: Dataset, *, internal: str, internal_protocol: str, trained_on: str) -> dict:
    """The record's `external` (results.schema.ExternalInfo)."""
    cohort = CohortInfo(tested.name, str(tested.source), len(tested.samples), dict(tested.class_counts()),
                        any(s.group is not None for s in tested.samples))
    return ExternalInfo(cohort, trained_on, internal_protocol, internal).to_dict()


def mark_external(record: dict, tested: Dataset, sizes: list[FoldSize], groups: list[str | None], *, internal: str,
                  internal_protocol: str, trained_on: str, refit: int | None = None) -> list[FoldSize]:
    """Make `record` an external one: its `external` block and the bootstrap unit of the cohort (patients when
    DATA2 has groups); returns the sizes with DATA2's images as the test part (and `refit`, when the final
    model was refitted on that many samples of DATA)."""
    record["external"] = external_block(tested, internal=internal, internal_protocol=internal_protocol,
                                        trained_on=trained_on)
    record["bootstrap"]["unit"] = "patient" if group_codes(groups) is not None else "sample"
    return [replace(size, refit=refit, test=len(groups)) for size in sizes]
