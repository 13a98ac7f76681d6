"""Device and precision choices for a forward pass."""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch

from medprobe.errors import MedprobeError

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise MedprobeError(f"--device {name!r} is not a device; use auto, cpu or cuda[:i]") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise MedprobeError(f"--device {name} asked for, but no CUDA GPU is visible; use --device cpu")
    return device


def cpu_supports_bf16() -> bool:
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def resolve_precision(name: str, device: torch.device) -> str:
    """auto: bf16 where the hardware runs it natively (recent GPUs, AVX512-BF16/AMX CPUs), else fp16 on
    older GPUs and fp32 on older CPUs."""
    if name not in PRECISIONS:
        raise MedprobeError(f"--precision {name!r} is not one of {', '.join(PRECISIONS)}")
    if name != "auto":
        return name
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "bf16" if cpu_supports_bf16() else "fp32"


def autocast(device: torch.device, precision: str):
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=_DTYPES[precision])


def device_name(device: torch.device) -> str:
    """The device as its user knows it: the GPU's name, or the CPU's model name."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return cpu_name()


def cpu_name(cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    """The CPU's model name ('AMD EPYC 7B13', 'Apple M2'), with its logical core count; the architecture
    ('x86_64') only where the system says nothing more."""
    import os
    import platform

    name = ""
    with contextlib.suppress(OSError):
        for line in cpuinfo.read_text(errors="replace").splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("model name", "Model", "cpu model", "Hardware") and value.strip():
                name = value.strip()
                break
    if not name and platform.system() == "Darwin":
        import subprocess

        with contextlib.suppress(OSError, subprocess.SubprocessError):
            name = subprocess.run(["sysctl", "-n", "machdep.cpu.brand_string"], capture_output=True, text=True,
                                  timeout=5).stdout.strip()
    name = " ".join(name.split()) or platform.processor() or platform.machine() or "CPU"
    cores = os.cpu_count()
    return f"{name} ({cores} cores)" if cores else name


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
