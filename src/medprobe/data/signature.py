"""How the cache recognises that a sample's source is unchanged.

Each sample has a cheap `stat` signature and a content `fingerprint`. For an image both describe its one
file (`size:mtime_ns`, blake2b of the bytes). For a volume slice they cover every source (each modality's
NIfTI file or DICOM series folder) plus the decoding options that change pixels but not the id (window,
4-D volume index), so a new window re-extracts. A slice's stat names its sources relative to the dataset
root (`t1/p1.nii.gz=123:456|window=0.5-99.5;...`), which lets `medprobe cache verify` recheck them from the
cache alone. A sample inside a container file (a DICOM frame, a MedMNIST or Hugging Face dataset image) is
described like a slice: its container file plus its options.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from medprobe.data.samples import Sample


def fingerprint_bytes(data: bytes) -> str:
    """Content fingerprint of a source file: a changed image gets a new one and is re-extracted."""
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def file_stat(path: Path) -> str:
    """`size:mtime_ns`; for a folder (a DICOM series) `files:total size:newest mtime_ns`."""
    if path.is_dir():
        infos = [p.stat() for p in sorted(path.iterdir()) if p.is_file() and not p.name.startswith(".")]
        return f"{len(infos)}:{sum(i.st_size for i in infos)}:{max((i.st_mtime_ns for i in infos), default=0)}"
    info = path.stat()
    return f"{info.st_size}:{info.st_mtime_ns}"


def files_fingerprint(blobs: dict[Path, bytes]) -> str:
    """One fingerprint for a file, or for all files of a series folder (in name order)."""
    if len(blobs) == 1:
        return fingerprint_bytes(next(iter(blobs.values())))
    return fingerprint_bytes("".join(f"{p.name}={fingerprint_bytes(b)};" for p, b in sorted(blobs.items())).encode())


def source_fingerprint(path: Path) -> str:
    from medprobe.data.volumes import read_files

    return files_fingerprint(read_files(path) if path.is_dir() else {path: path.read_bytes()})


def _relative(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return path.as_posix()


def sources(sample: Sample) -> tuple[Path, ...]:
    """The files (or series folders) a sample's pixels are read from."""
    return sample.slice.channels if sample.slice is not None else (sample.path,)


def _is_whole_file(sample: Sample) -> bool:
    return sample.slice is None and sample.member is None


def sample_stat(sample: Sample, root: Path) -> str:
    if _is_whole_file(sample):
        return file_stat(sample.path)
    parts = ";".join(f"{_relative(p, root)}={file_stat(p)}" for p in sources(sample))
    return f"{parts}|{sample.options}"


def _slice_fingerprint(per_source: list[str], options: str) -> str:
    return fingerprint_bytes(("|".join(per_source) + "|" + options).encode())


def stat_or_empty(sample: Sample, root: Path) -> str:
    """The sample's stat, or "" when its files cannot be read (an unreadable sample is recorded with it)."""
    try:
        return sample_stat(sample, root)
    except OSError:
        return ""


def unchanged_records(recorded: dict[str, dict], samples, root: Path) -> dict[str, dict]:
    """The entries of `recorded` (sample id -> {"stat": ..., ...}) whose sample is listed and unchanged since:
    how `extract --skip-bad` keeps a bad file skipped, and probes leave it out, until the file changes."""
    return {s.id: recorded[s.id] for s in samples
            if s.id in recorded and recorded[s.id].get("stat") == stat_or_empty(s, root)}


def combine_fingerprints(sample: Sample, per_source: list[str]) -> str:
    """A sample's fingerprint from its sources' fingerprints (one for an image)."""
    if _is_whole_file(sample):
        return per_source[0]
    return _slice_fingerprint(per_source, sample.options)


def sample_fingerprint(sample: Sample, memo: dict[Path, str] | None = None) -> str:
    """Reads the sources (each once per `memo`, so the slices of one volume share the read)."""
    memo = {} if memo is None else memo
    for path in sources(sample):
        if path not in memo:
            memo[path] = source_fingerprint(path)
    return combine_fingerprints(sample, [memo[p] for p in sources(sample)])


def recheck_stored(root: Path, sample_id: str, stat: str, fingerprint: str, *, deep: bool) -> str | None:
    """For `cache verify`, from the cache alone: 'missing', 'stale' or None (unchanged)."""
    if "|" not in stat:  # an image: the id is its path
        path = root / sample_id
        if not path.is_file():
            return "missing"
        if not deep and file_stat(path) == stat:
            return None
        return None if fingerprint_bytes(path.read_bytes()) == fingerprint else "stale"
    named, options = stat.rsplit("|", 1)
    sources = [(root / entry.rsplit("=", 1)[0], entry.rsplit("=", 1)[1]) for entry in named.split(";")]
    if any(not path.exists() for path, _ in sources):
        return "missing"
    if not deep and all(file_stat(path) == old for path, old in sources):
        return None
    current = _slice_fingerprint([source_fingerprint(path) for path, _ in sources], options)
    return None if current == fingerprint else "stale"

