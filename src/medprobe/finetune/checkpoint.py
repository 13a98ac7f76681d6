"""Checkpoints in safetensors: the weights, and for --resume the optimizer moments, the scheduler and
the RNG state, so an interrupted run continues to exactly the result of an uninterrupted one.

Written to a temporary name and renamed: a crash never leaves a checkpoint that looks complete."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file


def _atomic_save(tensors: dict[str, torch.Tensor], metadata: dict[str, str], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".partial")
    save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(temporary), metadata=metadata)
    os.replace(temporary, path)


def save_weights(model: torch.nn.Module, path: Path) -> None:
    # clone: safetensors refuses tensors that share storage (tied weights)
    _atomic_save({k: v.clone() for k, v in model.state_dict().items()}, {}, path)


def load_weights(model: torch.nn.Module, path: Path) -> None:
    model.load_state_dict(load_file(str(path)))


def save_training_state(path: Path, *, model, optimizer, scheduler, progress: dict) -> None:
    tensors = {f"model.{k}": v.clone() for k, v in model.state_dict().items()}
    optimizer_state = optimizer.state_dict()
    for index, state in optimizer_state["state"].items():
        for name, value in state.items():
            tensors[f"optimizer.{index}.{name}"] = value if torch.is_tensor(value) else torch.tensor(value)
    tensors["rng.cpu"] = torch.get_rng_state()
    if torch.cuda.is_available():
        tensors["rng.cuda"] = torch.cuda.get_rng_state()
    metadata = {"param_groups": json.dumps(optimizer_state["param_groups"]),
                "scheduler": json.dumps(scheduler.state_dict()), "progress": json.dumps(progress)}
    _atomic_save(tensors, metadata, path)


def load_training_state(path: Path, *, model, optimizer, scheduler) -> dict:
    from safetensors import safe_open

    tensors = load_file(str(path))
    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata()
    model.load_state_dict({k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")})
    state: dict[int, dict] = {}
    for key, value in tensors.items():
        if key.startswith("optimizer."):
            _, index, name = key.split(".", 2)
            state.setdefault(int(index), {})[name] = value
    optimizer.load_state_dict({"state": state, "param_groups": json.loads(metadata["param_groups"])})
    scheduler.load_state_dict(json.loads(metadata["scheduler"]))
    torch.set_rng_state(tensors["rng.cpu"])
    if "rng.cuda" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state(tensors["rng.cuda"])
    return json.loads(metadata["progress"])
