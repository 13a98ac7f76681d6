"""Backbone families, one module each; importing this package registers them all (torch-free).

Adding a family: a module here with a `@register`ed Family subclass (and its registry entries), imported below,
plus its fidelity test (tests/test_families.py)."""

from medprobe.models.families import (  # noqa: F401 - each import registers its families
    clip,
    dinov3,
    efficientnet_lite,
    open_clip,
    retfound,
    timm_hub,
    transformers_vit,
)
from medprobe.models.families.base import (
    FAMILIES,
    Family,
    backends,
    family_for_config,
    get_family,
    read_config,
    register,
)

__all__ = ["FAMILIES", "Family", "backends", "family_for_config", "get_family", "read_config", "register"]
