"""Remembered slice selections. The rules that read voxels (nonzero:F, mask, mask-top:K) would otherwise
decompress every volume each time a dataset loads, in probe and report as much as in extract. A selection
is stored under a key of the volume's and mask's paths and stat signatures plus the rule, so a changed
file is read again; the memo is only a speed-up, and any failure to read or write it is ignored."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from medprobe.data.signature import file_stat
from medprobe.locations import default_cache_dir


def memo_key(sources: list[Path], rule: str, axis: str, volume_index: int | None) -> str | None:
    try:
        described = [[str(p.resolve()), file_stat(p)] for p in sources]
    except OSError:
        return None
    text = json.dumps([described, rule, axis, volume_index])
    return hashlib.blake2b(text.encode(), digest_size=12).hexdigest()


def _path(key: str) -> Path:
    return default_cache_dir() / "slice-selections" / f"{key}.json"


def recall(key: str | None) -> list[int] | None:
    if key is None:
        return None
    try:
        return [int(i) for i in json.loads(_path(key).read_text())]
    except (OSError, ValueError, TypeError):
        return None


def remember(key: str | None, indices: list[int]) -> None:
    if key is None:
        return
    path = _path(key)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(f"{path.name}.{os.getpid()}.partial")
        temporary.write_text(json.dumps(indices))
        os.replace(temporary, path)
    except OSError:
        pass
