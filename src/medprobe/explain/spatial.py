"""The per-position features behind a backbone's pooled embedding, found without knowing its attribute
names: during one `embed` call every module's inputs and output are watched, and the spatial tensor whose
pooling *is* the embedding (checked numerically) is taken. A CNN's `gap` is the mean of its last feature map
(B, C, H, W) over positions; a ViT's `mean` is the mean of its final-normed patch tokens (B, prefix + H*W, D),
its `cls` the first of those tokens. So any backend, present or future, is covered as long as it pools so."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from medprobe.errors import MedprobeError

MAX_PREFIX_TOKENS = 9  # CLS + up to 8 register tokens


@dataclass
class SpatialFeatures:
    grid: torch.Tensor  # (B, H, W, D): one feature vector per position
    pooled: torch.Tensor  # (B, D): the backbone's embedding for the pool (what the probe was fitted on)
    kind: str  # "feature map" (CNN: class activation map) or "patch tokens" (ViT: class-evidence map)


def _tensors(value) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (tuple, list)):
        return [t for item in value for t in _tensors(item)]
    hidden = getattr(value, "last_hidden_state", None)  # transformers' ModelOutput
    return [hidden] if isinstance(hidden, torch.Tensor) else []


def _close(a: torch.Tensor, b: torch.Tensor) -> bool:
    scale = float(b.abs().max()) or 1.0
    return a.shape == b.shape and bool(torch.allclose(a.float(), b.float(), rtol=1e-3, atol=1e-4 * scale))


def _as_grid(tensor: torch.Tensor, pooled: dict[str, torch.Tensor], pool: str) -> tuple[torch.Tensor, str] | None:
    target = pooled[pool]
    batch, dim = target.shape
    if tensor.dim() == 4 and tensor.shape[:2] == (batch, dim) and _close(tensor.mean(dim=(2, 3)), target):
        return tensor.permute(0, 2, 3, 1), "feature map"
    if tensor.dim() != 3 or tensor.shape[0] != batch or tensor.shape[2] != dim:
        return None
    mean = pooled.get("mean") if pool != "mean" else target
    if pool == "cls" and not _close(tensor[:, 0], target):
        return None
    for prefix in range(0, MAX_PREFIX_TOKENS + 1):
        side = math.isqrt(tensor.shape[1] - prefix)
        if side * side != tensor.shape[1] - prefix or side < 2:
            continue
        patches = tensor[:, prefix:]
        if mean is not None and _close(patches.mean(dim=1), mean) and (pool != "cls" or prefix >= 1):
            return patches.reshape(batch, side, side, dim), "patch tokens"
    return None


def spatial_features(backbone, pixels: torch.Tensor, pool: str) -> SpatialFeatures:
    """One forward pass; MedprobeError when no watched tensor pools to the embedding (e.g. `cls4`)."""
    seen: list[torch.Tensor] = []

    def watch(_module, inputs, output) -> None:
        seen.extend(_tensors(inputs))
        seen.extend(_tensors(output))

    hooks = [module.register_forward_hook(watch) for module in backbone.module.modules()]
    try:
        with torch.inference_mode():
            pooled = {name: value.float() for name, value in backbone.embed(pixels).items()}
    finally:
        for hook in hooks:
            hook.remove()
    if pool not in pooled:
        raise MedprobeError(f"{backbone.spec.name} has no pool {pool!r}; it offers {', '.join(pooled)}")
    for tensor in reversed(seen):  # the last spatial tensor before pooling
        found = _as_grid(tensor.float(), pooled, pool)
        if found is not None:
            return SpatialFeatures(found[0], pooled[pool], found[1])
    raise MedprobeError(f"{backbone.spec.name}: its {pool!r} embedding is not a mean over positions or the CLS "
                        "token, so there is no per-position map to draw; explain a record of the cls, mean or gap "
                        "pool")
