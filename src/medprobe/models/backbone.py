"""The Backbone every family returns, and the dispatch from a ModelSpec to its family.

A Backbone is a frozen module plus its preprocessing plus `embed(batch) -> {pool: (B, D) tensor}`:
every pool a backbone offers is computed in one forward pass.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from medprobe.errors import MedprobeError
from medprobe.models.families import Family, family_for_config, get_family
from medprobe.models.preprocess import Preprocessing
from medprobe.models.spec import ModelSpec

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pth", ".pt")


@dataclass
class BlockLayout:
    """Where fine-tuning `last-N` cuts: the backbone's blocks in forward order (each a list of parameters),
    and the parameters after the last block (final norms, projections) that train with any of them."""

    blocks: list[list[torch.nn.Parameter]]
    top: list[torch.nn.Parameter] = field(default_factory=list)


def module_layout(blocks, *tops) -> BlockLayout:
    """A BlockLayout from a sequence of block modules and the modules/parameters after them (None skipped)."""
    top: list[torch.nn.Parameter] = []
    for part in tops:
        if isinstance(part, torch.nn.Parameter):
            top.append(part)
        elif part is not None:
            top += list(part.parameters())
    return BlockLayout([list(block.parameters()) for block in blocks], top)


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
    family: str = ""
    standard: tuple[str, ...] = ()
    extra: dict = field(default_factory=dict)

    @property
    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.module.parameters())

    def layout(self) -> BlockLayout:
        layout = get_family(self.family).layout(self.module)
        if len(layout.blocks) < 1:
            raise MedprobeError(f"cannot find the blocks of {self.spec.name} for --unfreeze last-N; "
                                "use --unfreeze all or none")
        return layout


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


def load_backbone(spec: ModelSpec, *, image_size: int | None = None) -> Backbone:
    family = family_of(spec)
    backbone = family.load(spec, resolve_preprocessing(spec, image_size=image_size))
    backbone.family = family.name
    backbone.standard = (spec.standard or tuple(p for p in family.standard if p in backbone.pools)
                         or backbone.pools[:1])
    backbone.module.eval().requires_grad_(False)
    return backbone
