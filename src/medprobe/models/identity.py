"""What a backbone is, without torch: its family, its preprocessing and the identity of its weights, read
from configs and file contents. Deciding whether a cache is up to date needs only these."""

from __future__ import annotations

import hashlib
from dataclasses import replace
from pathlib import Path

from medprobe.errors import MedprobeError
from medprobe.models.families import Family, family_for_config, get_family
from medprobe.models.preprocess import Preprocessing
from medprobe.models.spec import ModelSpec

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pth", ".pt")


def hash_files(paths: list[Path]) -> str:
    digest = hashlib.blake2b(digest_size=16)
    for path in sorted(paths):
        digest.update(path.name.encode())
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 22), b""):
                digest.update(block)
    return digest.hexdigest()


def hash_model_directory(directory: Path) -> str:
    """Content identity of a local checkpoint: config plus every weight file (or the one checkpoint file)."""
    if directory.is_file():
        return "sha:" + hash_files([directory])
    files = [p for p in directory.iterdir() if p.is_file() and (p.suffix in WEIGHT_SUFFIXES or p.suffix == ".json")]
    if not any(p.suffix in WEIGHT_SUFFIXES for p in files):
        raise MedprobeError(f"model directory {directory} holds no weights ({', '.join(WEIGHT_SUFFIXES)})")
    return "sha:" + hash_files(files)


def family_of(spec: ModelSpec) -> Family:
    """The spec's family; an `hf:` id names none, so its config.json (hub cache or hub) decides."""
    if spec.family is not None:
        return get_family(spec.family)
    from medprobe.models.hub import checkpoint_config

    return family_for_config(spec.backend, checkpoint_config(spec), spec.source)


def resolve_preprocessing(spec: ModelSpec, *, image_size: int | None = None) -> Preprocessing:
    """The backbone's preprocessing from its own config, without loading weights."""
    prep = family_of(spec).preprocessing(spec)
    if spec.norm is not None:
        prep = replace(prep, mean=spec.norm[0], std=spec.norm[1])
    return prep.with_image_size(image_size) if image_size else prep


def weights_identity(spec: ModelSpec) -> str | None:
    """What the weights are, cheaply and without loading them: a hub commit already in the local hub
    cache, or a content hash. None when unknown until the weights are fetched."""
    if spec.is_local:
        return hash_model_directory(Path(spec.source))
    return family_of(spec).weights_identity(spec)
