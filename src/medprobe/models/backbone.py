"""The Backbone every backend returns, and the dispatch from a ModelSpec to its backend.

A Backbone is a frozen module plus its preprocessing plus `embed(batch) -> {pool: (B, D) tensor}`:
every pool a backbone offers is computed in one forward pass.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from medprobe.errors import MedprobeError
from medprobe.models.preprocess import Preprocessing
from medprobe.models.registry import ModelSpec

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pth", ".pt")


@dataclass
class Backbone:
    spec: ModelSpec
    module: torch.nn.Module
    preprocessing: Preprocessing
    embed: Callable[[torch.Tensor], dict[str, torch.Tensor]]
    pools: tuple[str, ...]
    is_cnn: bool
    weights_identity: str
    resolved_revision: str | None = None
    extra: dict = field(default_factory=dict)

    @property
    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.module.parameters())


def hash_files(paths: list[Path]) -> str:
    digest = hashlib.blake2b(digest_size=16)
    for path in sorted(paths):
        digest.update(path.name.encode())
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 22), b""):
                digest.update(block)
    return digest.hexdigest()


def hash_model_directory(directory: Path) -> str:
    """Content identity of a local checkpoint: config plus every weight file."""
    files = [p for p in directory.iterdir() if p.is_file() and (p.suffix in WEIGHT_SUFFIXES or p.suffix == ".json")]
    if not any(p.suffix in WEIGHT_SUFFIXES for p in files):
        raise MedprobeError(f"model directory {directory} holds no weights ({', '.join(WEIGHT_SUFFIXES)})")
    return "sha:" + hash_files(files)


def _backend(spec: ModelSpec):
    if spec.backend == "transformers":
        from medprobe.models import hf_backend as backend
    elif spec.backend == "timm":
        from medprobe.models import timm_backend as backend
    else:
        from medprobe.models import effnet_backend as backend
    return backend


def resolve_preprocessing(spec: ModelSpec, *, image_size: int | None = None) -> Preprocessing:
    """The backbone's preprocessing from its own config, without loading weights."""
    prep = _backend(spec).preprocessing(spec)
    return prep.with_image_size(image_size) if image_size else prep


def weights_identity(spec: ModelSpec) -> str | None:
    """What the weights are, cheaply and without loading them: a hub commit already in the local hub
    cache, or a content hash. None when unknown until the weights are fetched."""
    if spec.is_local:
        return hash_model_directory(Path(spec.source))
    return _backend(spec).weights_identity(spec)


def load_backbone(spec: ModelSpec, *, image_size: int | None = None) -> Backbone:
    backbone = _backend(spec).load(spec, resolve_preprocessing(spec, image_size=image_size))
    backbone.module.eval().requires_grad_(False)
    return backbone
