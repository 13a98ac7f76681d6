"""Which parameters train under --unfreeze none | all | last-N."""

from __future__ import annotations

import re

from torch import nn

from medprobe.errors import MedprobeError

# Where each backbone family keeps its sequence of blocks/stages, first match wins.
BLOCK_PATHS = ("encoder.layer", "blocks", "stages", "_blocks", "features", "layers")
_RESNET_STAGES = ("layer1", "layer2", "layer3", "layer4")


def _get(module: nn.Module, path: str) -> nn.Module | None:
    for name in path.split("."):
        module = getattr(module, name, None)
        if module is None:
            return None
    return module


def backbone_blocks(module: nn.Module) -> list[nn.Module]:
    """The backbone's blocks in forward order (transformer layers, CNN stages)."""
    if all(hasattr(module, name) for name in _RESNET_STAGES):
        return [getattr(module, name) for name in _RESNET_STAGES]
    for path in BLOCK_PATHS:
        found = _get(module, path)
        if isinstance(found, (nn.ModuleList, nn.Sequential)) and len(found) > 1:
            return list(found)
    raise MedprobeError(f"cannot find the blocks of {type(module).__name__} for --unfreeze last-N; "
                        "use --unfreeze all or none")


def final_norms(module: nn.Module) -> list[nn.Module]:
    """Norm layers applied after the last block (they belong to the top of the network)."""
    return [m for name in ("layernorm", "norm", "fc_norm", "_bn1", "bn2") if (m := getattr(module, name, None))
            is not None and isinstance(m, nn.Module)]


def parse_unfreeze(value: str) -> tuple[str, int]:
    match = re.fullmatch(r"(all|none)|last-(\d+)", value)
    if not match:
        raise MedprobeError(f"--unfreeze {value!r}: use all, none or last-N (e.g. last-2)")
    return (match.group(1), 0) if match.group(1) else ("last", int(match.group(2)))


def apply_unfreeze(module: nn.Module, value: str) -> int:
    """Set requires_grad on the backbone; returns the number of trainable backbone parameters."""
    mode, count = parse_unfreeze(value)
    module.requires_grad_(mode == "all")
    if mode == "last":
        blocks = backbone_blocks(module)
        if not 1 <= count <= len(blocks):
            raise MedprobeError(
                f"--unfreeze last-{count}: this backbone has {len(blocks)} blocks; use last-1 .. last-{len(blocks)}")
        for part in blocks[-count:] + final_norms(module):
            part.requires_grad_(True)
    return sum(p.numel() for p in module.parameters() if p.requires_grad)
