"""The Backbone every family returns, and the dispatch from a ModelSpec to its family.

A Backbone is a frozen module plus its preprocessing plus `embed(batch) -> {pool: (B, D) tensor}`:
every pool a backbone offers is computed in one forward pass.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from medprobe.errors import MedprobeError
from medprobe.models.families import get_family
from medprobe.models.identity import family_of, resolve_preprocessing
from medprobe.models.preprocess import Preprocessing
from medprobe.models.spec import ModelSpec


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


def load_backbone(spec: ModelSpec, *, image_size: int | None = None) -> Backbone:
    family = family_of(spec)
    backbone = family.load(spec, resolve_preprocessing(spec, image_size=image_size))
    backbone.family = family.name
    backbone.standard = (spec.standard or tuple(p for p in family.standard if p in backbone.pools)
                         or backbone.pools[:1])
    backbone.module.eval().requires_grad_(False)
    return backbone
