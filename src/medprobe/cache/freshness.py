"""Which cached rows still describe the files on disk. A row is fresh when it is done and its source file
is unchanged: same size and mtime, or, when those moved, the same bytes (then only the stat is renewed)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from medprobe.cache.store import CacheContents
from medprobe.data.images import fingerprint_bytes


def stat_signature(path: Path) -> str:
    info = path.stat()
    return f"{info.st_size}:{info.st_mtime_ns}"


@dataclass
class FreshnessPlan:
    todo: list[int] = field(default_factory=list)  # sample positions that need (re-)extraction
    changed: list[int] = field(default_factory=list)  # subset of todo: done rows whose file changed
    restat: dict[str, str] = field(default_factory=dict)  # id -> new stat, bytes unchanged
    fresh: int = 0

    @property
    def up_to_date(self) -> bool:
        return not self.todo


def plan_rows(contents: CacheContents | None, samples: Sequence[tuple[str, Path]]) -> FreshnessPlan:
    plan = FreshnessPlan()
    row_of = contents.row_of if contents is not None else {}
    for position, (sample_id, path) in enumerate(samples):
        row = row_of.get(sample_id)
        if row is None or not contents.done[row]:
            plan.todo.append(position)
            continue
        stat = stat_signature(path)
        if stat == contents.stats[row]:
            plan.fresh += 1
        elif fingerprint_bytes(path.read_bytes()) == contents.fingerprints[row]:
            plan.restat[sample_id] = stat
            plan.fresh += 1
        else:
            plan.todo.append(position)
            plan.changed.append(position)
    return plan
