"""Which cached rows still describe the sources on disk. A row is fresh when it is done and its sources are
unchanged: same stat signature, or, when that moved, the same bytes (then only the stat is renewed)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from medprobe.cache.store import CacheContents
from medprobe.data.samples import Sample
from medprobe.data.signature import sample_fingerprint, sample_stat


@dataclass
class FreshnessPlan:
    todo: list[int] = field(default_factory=list)  # sample positions that need (re-)extraction
    changed: list[int] = field(default_factory=list)  # subset of todo: done rows whose source changed
    restat: dict[str, str] = field(default_factory=dict)  # id -> new stat, bytes unchanged
    fresh: int = 0

    @property
    def up_to_date(self) -> bool:
        return not self.todo


def plan_rows(contents: CacheContents | None, samples: Sequence[Sample], root: Path) -> FreshnessPlan:
    plan = FreshnessPlan()
    row_of = contents.row_of if contents is not None else {}
    fingerprints: dict[Path, str] = {}  # the slices of one volume read it once
    for position, sample in enumerate(samples):
        row = row_of.get(sample.id)
        if row is None or not contents.done[row]:
            plan.todo.append(position)
            continue
        stat = sample_stat(sample, root)
        if stat == contents.stats[row]:
            plan.fresh += 1
        elif sample_fingerprint(sample, fingerprints) == contents.fingerprints[row]:
            plan.restat[sample.id] = stat
            plan.fresh += 1
        else:
            plan.todo.append(position)
            plan.changed.append(position)
    return plan
