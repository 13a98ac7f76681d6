"""Backbone names users type, and what each resolves to. No torch here: `medprobe models` and the
cache-freshness check must not pay for importing it. The entries themselves live with their families."""

from __future__ import annotations

import difflib
from dataclasses import replace
from pathlib import Path

from medprobe.errors import MedprobeError
from medprobe.models.families import FAMILIES, family_for_config, read_config
from medprobe.models.families.open_clip import CONFIG as OPEN_CLIP_CONFIG
from medprobe.models.spec import CNN_POOLS, VIT_POOLS, ModelSpec

__all__ = ["CNN_POOLS", "REGISTRY", "VIT_POOLS", "ModelSpec", "auto_pools", "resolve_model"]

REGISTRY: dict[str, ModelSpec] = {spec.name: spec for family in FAMILIES.values() for spec in family.entries()}


def auto_pools(stored: list[str] | tuple[str, ...]) -> list[str]:
    """The `auto` pool: CLS and mean patch token concatenated for ViTs, else the backbone's first pool."""
    return ["cls", "mean"] if "cls" in stored and "mean" in stored else list(stored[:1])


def _local_spec(directory: Path) -> ModelSpec:
    """A folder as saved for the hub: transformers save_pretrained, timm save_for_hf or open_clip."""
    if (directory / OPEN_CLIP_CONFIG).is_file():
        config, backend = read_config(directory / OPEN_CLIP_CONFIG), "open_clip"
    elif (directory / "config.json").is_file():
        config = read_config(directory / "config.json")
        if "architecture" in config:
            backend = "timm"
        elif "model_type" in config:
            backend = "transformers"
        else:
            raise MedprobeError(f"{directory / 'config.json'} is neither a transformers nor a timm config "
                                "(no model_type/architecture key)")
    else:
        raise MedprobeError(f"model directory {directory} has no config.json; pass a folder written by transformers "
                            f"save_pretrained, timm save_for_hf or open_clip ({OPEN_CLIP_CONFIG})")
    family = family_for_config(backend, config, str(directory))
    return ModelSpec(directory.name, backend, str(directory), family=family.name)


PREFIXES = {  # name prefix -> (backend, family or None when the checkpoint's config decides)
    "hf:": ("transformers", None),
    "timm:": ("timm", "timm"),
    "openclip:": ("open_clip", "open_clip"),
    "retfound:": ("retfound", "retfound"),  # retfound:PATH.pth, a RETFound checkpoint downloaded by hand
}


def resolve_model(name: str, *, revision: str | None = None) -> ModelSpec:
    """Registry name, `hf:ORG/NAME`, `timm:NAME`, `openclip:hf-hub:ORG/NAME`, `retfound:PATH.pth` or a local model
    folder -> ModelSpec."""
    name = name.strip()
    prefix = next((p for p in PREFIXES if name.startswith(p) and len(name) > len(p)), None)
    if name in REGISTRY:
        spec = REGISTRY[name]
    elif prefix == "hf:" and "/" not in name[3:]:
        raise MedprobeError(f"{name}: use hf:ORG/NAME")
    elif prefix == "retfound:":  # a file: the same checkpoint whatever the working directory
        path = Path(name[len(prefix):]).expanduser()
        if not path.is_file():
            raise MedprobeError(f"{name}: no such file; use retfound:PATH to a RETFound .pth checkpoint, or a "
                                "registry name (retfound-mae-cfp, ...)")
        backend, family = PREFIXES[prefix]
        spec = ModelSpec(name, backend, str(path.resolve()), family=family)
    elif prefix == "openclip:" and not name[len(prefix):].startswith("hf-hub:"):
        raise MedprobeError(f"{name}: use openclip:hf-hub:ORG/NAME, or pass a folder holding {OPEN_CLIP_CONFIG}")
    elif prefix is not None:
        backend, family = PREFIXES[prefix]
        spec = ModelSpec(name, backend, name[len(prefix):], family=family)
    elif Path(name).expanduser().is_dir():
        spec = _local_spec(Path(name).expanduser().resolve())
    else:
        close = difflib.get_close_matches(name, list(REGISTRY), n=3, cutoff=0.4)
        hint = f"did you mean {', '.join(close)}? " if close else ""
        raise MedprobeError(f"unknown model {name!r}; {hint}see `medprobe models`, or use "
                            f"{', '.join(p + '...' for p in PREFIXES)} or a local folder")
    if revision is not None:
        if spec.is_local or spec.from_pypi or spec.backend == "open_clip":
            raise MedprobeError(f"--revision applies to transformers and timm hub models only, not {name}; "
                                "drop --revision")
        spec = replace(spec, revision=revision)
    return spec

