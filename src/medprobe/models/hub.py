"""Hugging Face hub look-ups shared by the transformers and timm backends (no weights are loaded)."""

from __future__ import annotations

import os
import socket
from pathlib import Path

from medprobe.errors import MedprobeError


def cached_commit(repo_id: str, revision: str | None, filename: str = "config.json") -> str | None:
    """The commit the local hub cache resolves `revision` to, or None if nothing is cached yet."""
    from huggingface_hub import try_to_load_from_cache

    try:
        found = try_to_load_from_cache(repo_id, filename, revision=revision or "main")
    except Exception:  # noqa: BLE001 - a malformed cache simply means "unknown"
        return None
    if not isinstance(found, str):
        return None
    parts = Path(found).parts
    return parts[parts.index("snapshots") + 1] if "snapshots" in parts else None


def hub_error(source: str, exc: BaseException) -> MedprobeError:
    first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else exc.__class__.__name__
    return MedprobeError(
        f"cannot load model {source!r} ({first_line}); check the name and your network, pre-download it with "
        "`huggingface-cli download`, or pass a local directory"
    )


def unavailable_reason(spec, timeout: float = 3.0) -> str | None:
    """Why a hub backbone cannot be loaded here right now (None when it can, or needs no hub): it is in
    the local hub cache, or the hub answers within `timeout` seconds. Never waits on a dead network."""
    if spec.hub_repo is None or cached_commit(spec.hub_repo, spec.revision) is not None:
        return None
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        return "HF_HUB_OFFLINE is set and it is not in the local hub cache"
    try:
        socket.create_connection(("huggingface.co", 443), timeout=timeout).close()
    except OSError:
        return "the Hugging Face hub is not reachable and it is not in the local hub cache"
    return None
