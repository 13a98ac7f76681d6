"""Which parameters train under --unfreeze none | all | last-N. Where the blocks are is the backbone family's
knowledge (Backbone.layout); this module only applies the policy."""

from __future__ import annotations

import re

from medprobe.errors import MedprobeError
from medprobe.models.backbone import Backbone


def parse_unfreeze(value: str) -> tuple[str, int]:
    match = re.fullmatch(r"(all|none)|last-(\d+)", value)
    if not match:
        raise MedprobeError(f"--unfreeze {value!r}: use all, none or last-N (e.g. last-2)")
    return (match.group(1), 0) if match.group(1) else ("last", int(match.group(2)))


def apply_unfreeze(backbone: Backbone, value: str) -> int:
    """Set requires_grad on the backbone; returns the number of trainable backbone parameters."""
    mode, count = parse_unfreeze(value)
    module = backbone.module
    module.requires_grad_(mode == "all")
    if mode == "last":
        layout = backbone.layout()
        blocks = layout.blocks
        if not 1 <= count <= len(blocks):
            raise MedprobeError(
                f"--unfreeze last-{count}: this backbone has {len(blocks)} blocks; use last-1 .. last-{len(blocks)}")
        for parameter in [p for block in blocks[-count:] for p in block] + layout.top:
            parameter.requires_grad_(True)
    return sum(p.numel() for p in module.parameters() if p.requires_grad)
