"""Whether this process is one of a torchrun world, from torchrun's environment alone (no torch import)."""

from __future__ import annotations

import os


def is_distributed() -> bool:
    """True inside a torchrun world of more than one process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def is_leader() -> bool:
    return os.environ.get("RANK", "0") == "0"
