"""The Family interface and its registry. A family is one kind of checkpoint (DINOv2, CLIP/SigLIP, a timm
model, ...): how to recognise it, read its preprocessing, load it, which pools it offers and which one its model
card embeds with, where its blocks are for fine-tuning, and what its weights are. A family registers itself with
`@register`; nothing outside models/ knows a family's attribute names.

Import-time torch-free (the registry and `medprobe models` read families without loading torch); the torch side
runs inside the methods.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from medprobe.errors import MedprobeError
from medprobe.models.spec import ModelSpec

if TYPE_CHECKING:
    from medprobe.models.backbone import Backbone, BlockLayout
    from medprobe.models.preprocess import Preprocessing

FAMILIES: dict[str, Family] = {}


class Family:
    name: ClassVar[str]
    backend: ClassVar[str]  # the library that loads it (ModelSpec.backend)
    summary: ClassVar[str]
    pools: ClassVar[tuple[str, ...]]
    standard: ClassVar[tuple[str, ...]]  # the model card's embedding: one pool, or pools concatenated
    is_cnn: ClassVar[bool] = False
    model_types: ClassVar[tuple[str, ...]] = ()  # transformers config `model_type`s it claims
    fallback: ClassVar[int] = 0  # > 0: also claims configs no family names; lower is asked first

    def entries(self) -> list[ModelSpec]:
        """Its registry entries (`medprobe models`)."""
        return []

    def claims(self, config: dict) -> bool:
        """Whether a checkpoint with this config.json belongs to the family."""
        return config.get("model_type") in self.model_types

    def preprocessing(self, spec: ModelSpec) -> Preprocessing:
        raise NotImplementedError

    def weights_identity(self, spec: ModelSpec) -> str | None:
        """What the weights are, without loading them (None: unknown until fetched)."""
        raise NotImplementedError

    def weights_installed(self, spec: ModelSpec) -> bool:
        """For weights that come with a package (not the hub): whether that package is installed."""
        return False

    def load(self, spec: ModelSpec, prep: Preprocessing) -> Backbone:
        raise NotImplementedError

    def layout(self, module) -> BlockLayout:
        """The module's blocks in forward order and the parameters after the last one (fine-tuning last-N)."""
        raise NotImplementedError


def register(cls: type[Family]) -> type[Family]:
    if cls.name in FAMILIES:
        raise ValueError(f"backbone family {cls.name!r} is registered twice")
    FAMILIES[cls.name] = cls()
    return cls


def get_family(name: str) -> Family:
    try:
        return FAMILIES[name]
    except KeyError:
        raise MedprobeError(f"unknown backbone family {name!r}; families: {', '.join(sorted(FAMILIES))}") from None


def backends() -> tuple[str, ...]:
    return tuple(sorted({family.backend for family in FAMILIES.values()}))


def family_for_config(backend: str, config: dict, where: str) -> Family:
    """The family of a checkpoint of `backend` whose config.json holds `config`: a family that names its
    model_type, else the most specific fallback that accepts it."""
    candidates = [f for f in FAMILIES.values() if f.backend == backend]
    if not candidates:
        raise MedprobeError(f"unknown backend {backend!r} for {where}; backends: {', '.join(backends())}")
    for family in sorted(candidates, key=lambda f: f.fallback):
        if family.claims(config):
            return family
    raise MedprobeError(f"{where}: no {backend} backbone family recognises model_type "
                        f"{config.get('model_type')!r}; families: {', '.join(f.name for f in candidates)}")


def read_config(path: Path) -> dict:
    """A checkpoint's JSON config as a dict, or one clear error naming the file."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise MedprobeError(f"{path} is not valid JSON ({exc}); re-save the model") from exc
    if not isinstance(data, dict):
        raise MedprobeError(f"{path} holds no JSON object; re-save the model")
    return data
