"""Shared fixtures. Tests never touch the network: tiny backbones are built from configs, saved to temp
folders and loaded through the same code path as hub models."""

from __future__ import annotations

import csv
import ipaddress
import os
import signal
import socket
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# A shell's background job starts with SIGINT ignored, and ignored signals survive exec: every medprobe the
# interruption tests start would then ignore their Ctrl-C. A handled signal is reset to default on exec.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from PIL import Image  # noqa: E402


def blob_image(rng: np.random.Generator, label: int, size: tuple[int, int] = (48, 40)) -> np.ndarray:
    """An RGB uint8 image whose class shows as a bright square top-left (0) or bottom-right (1)."""
    height, width = size
    pixels = rng.integers(0, 90, (height, width, 3), dtype=np.uint8)
    if label == 0:
        y, x = slice(4, 20), slice(4, 20)
    else:
        y, x = slice(height - 20, height - 4), slice(width - 20, width - 4)
    pixels[y, x] = 230
    return pixels


@pytest.fixture(autouse=True, scope="session")
def private_medprobe_cache(tmp_path_factory):
    """Nothing a test computes (slice selections, caches without --cache-dir) lands in the user's cache."""
    previous = os.environ.get("MEDPROBE_CACHE")
    os.environ["MEDPROBE_CACHE"] = str(tmp_path_factory.mktemp("medprobe-cache"))
    yield
    if previous is None:
        os.environ.pop("MEDPROBE_CACHE", None)
    else:
        os.environ["MEDPROBE_CACHE"] = previous


LOCAL_NAMES = {"localhost", socket.gethostname()}
try:
    LOCAL_ADDRESSES = {info[4][0] for info in socket.getaddrinfo(socket.gethostname(), None)}
except OSError:  # a host name the resolver does not know: loopback only
    LOCAL_ADDRESSES = set()


def is_local(host) -> bool:
    """Loopback, this machine's own name, or an address of this machine (a local Dask cluster binds to one)."""
    if host in (None, "") or host in LOCAL_NAMES:
        return True
    try:
        address = ipaddress.ip_address(str(host).split("%")[0])
    except ValueError:
        return False
    return address.is_loopback or address.is_unspecified or str(address) in LOCAL_ADDRESSES


class NetworkGuard:
    """Refuses every name lookup and connection that would leave this machine, and keeps each attempt: code
    that turns a refused connection into "not reachable" would otherwise hide it."""

    def __init__(self) -> None:
        self.attempts: list[str] = []
        self.real = (socket.getaddrinfo, socket.socket.connect, socket.socket.connect_ex)

    def refuse(self, what: str):
        self.attempts.append(what)
        raise OSError(f"tests must not touch the network: {what}")

    def getaddrinfo(self, host, *args, **kwargs):
        return self.real[0](host, *args, **kwargs) if is_local(host) else self.refuse(f"name lookup of {host}")

    def install(self) -> None:
        guard = self

        def connect(sock, address):
            if sock.family in (socket.AF_INET, socket.AF_INET6) and not is_local(address[0]):
                guard.refuse(f"connection to {address[0]}:{address[1]}")
            return guard.real[1](sock, address)

        def connect_ex(sock, address):
            if sock.family in (socket.AF_INET, socket.AF_INET6) and not is_local(address[0]):
                guard.refuse(f"connection to {address[0]}:{address[1]}")
            return guard.real[2](sock, address)

        socket.getaddrinfo = self.getaddrinfo
        socket.socket.connect, socket.socket.connect_ex = connect, connect_ex

    def remove(self) -> None:
        socket.getaddrinfo, socket.socket.connect, socket.socket.connect_ex = self.real


@pytest.fixture(autouse=True, scope="session")
def no_network():
    """README: the tests never touch the network. In the pytest process (where the CLI tests run main()) every
    lookup or connection off this machine is refused, and the session fails if one was even tried."""
    guard = NetworkGuard()
    guard.install()
    yield guard
    guard.remove()
    assert not guard.attempts, f"tests tried to reach the network: {guard.attempts}"


def blob_patients(root: Path, *, patients: int, per_patient: int, size: tuple[int, int]) -> Path:
    """A manifest of `patients` x `per_patient` blob images (path,label,group); the class is where the bright
    square sits, alternating per patient."""
    rng = np.random.default_rng(0)
    (root / "img").mkdir(parents=True)
    rows = ["path,label,group"]
    for i in range(patients * per_patient):
        label = (i // per_patient) % 2
        Image.fromarray(blob_image(rng, label, size)).save(root / "img" / f"{i:02d}.png")
        rows.append(f"img/{i:02d}.png,{['left', 'right'][label]},p{i // per_patient:02d}")
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    return root / "labels.csv"


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    """ImageFolder layout: 2 classes x 6 images of mixed sizes and formats."""
    rng = np.random.default_rng(0)
    root = tmp_path / "folder"
    for label, name in enumerate(["benign", "malignant"]):
        (root / name).mkdir(parents=True)
        for i in range(6):
            size = (48 + 3 * i, 40 + 5 * i)
            suffix = ".png" if i % 2 else ".jpg"
            Image.fromarray(blob_image(rng, label, size)).save(root / name / f"img{i}{suffix}")
    return root


@pytest.fixture
def manifest(tmp_path: Path) -> Path:
    """CSV manifest with groups (patients) and explicit splits over 16 images."""
    rng = np.random.default_rng(1)
    root = tmp_path / "csvdata"
    (root / "img").mkdir(parents=True)
    rows = []
    for i in range(16):
        label = i % 2
        Image.fromarray(blob_image(rng, label)).save(root / "img" / f"s{i:02d}.png")
        rows.append({"path": f"img/s{i:02d}.png", "label": ["normal", "pneumonia"][label],
                     "group": f"pt{i // 2}", "split": ["train", "train", "val", "test"][(i // 2) % 4]})
    path = root / "labels.csv"
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["path", "label", "group", "split"])
        writer.writeheader()
        writer.writerows(rows)
    return path


def save_tiny_dinov2(folder: Path, *, registers: int = 0, seed: int = 0) -> Path:
    import torch
    from transformers import (
        BitImageProcessor,
        Dinov2Config,
        Dinov2Model,
        Dinov2WithRegistersConfig,
        Dinov2WithRegistersModel,
    )

    torch.manual_seed(seed)
    common = dict(hidden_size=32, num_hidden_layers=4, num_attention_heads=2, intermediate_size=64,
                  patch_size=8, image_size=32)
    if registers:
        model = Dinov2WithRegistersModel(Dinov2WithRegistersConfig(num_register_tokens=registers, **common))
    else:
        model = Dinov2Model(Dinov2Config(**common))
    # The default init (std 0.02) makes a random ViT nearly blind to its input; a strong patch projection
    # makes its features depend on the pixels, so the fidelity test can tell preprocessing apart.
    torch.nn.init.normal_(model.embeddings.patch_embeddings.projection.weight, std=0.5)
    model.save_pretrained(folder)
    BitImageProcessor(size={"shortest_edge": 39}, crop_size={"height": 32, "width": 32}, resample=3,
                      image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225]).save_pretrained(folder)
    return folder


def save_tiny_vit(folder: Path) -> Path:
    import torch
    from transformers import ViTConfig, ViTImageProcessor, ViTModel

    torch.manual_seed(0)
    config = ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                       patch_size=8, image_size=32)
    model = ViTModel(config, add_pooling_layer=False)
    torch.nn.init.normal_(model.embeddings.patch_embeddings.projection.weight, std=0.5)
    model.save_pretrained(folder)
    ViTImageProcessor(size={"height": 32, "width": 32}, resample=2).save_pretrained(folder)
    return folder


def save_tiny_timm(folder: Path, name: str, *, input_size: int = 64, **model_args) -> Path:
    import timm
    import torch
    from timm.models import save_for_hf

    torch.manual_seed(0)
    model_args = {"num_classes": 0, **model_args}
    model = timm.create_model(name, pretrained=False, **model_args)
    save_for_hf(model, folder, model_args=model_args, safe_serialization=True,
                data_config={"input_size": (3, input_size, input_size), "crop_pct": 0.875,
                             "interpolation": "bicubic"})
    return folder


@pytest.fixture(scope="session")
def tiny_dinov2(tmp_path_factory) -> Path:
    return save_tiny_dinov2(tmp_path_factory.mktemp("models") / "tiny-dinov2")


@pytest.fixture(scope="session")
def tiny_dinov2_reg(tmp_path_factory) -> Path:
    return save_tiny_dinov2(tmp_path_factory.mktemp("models") / "tiny-dinov2-reg", registers=2)


@pytest.fixture(scope="session")
def tiny_vit(tmp_path_factory) -> Path:
    return save_tiny_vit(tmp_path_factory.mktemp("models") / "tiny-vit")


@pytest.fixture(scope="session")
def tiny_timm_models(tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("timm")
    return {
        "resnet": save_tiny_timm(base / "resnet", "test_resnet"),
        "vit": save_tiny_timm(base / "vit", "test_vit", input_size=64),
        "vgg": save_tiny_timm(base / "vgg", "vgg11", mlp_ratio=0.01),
        "densenet": save_tiny_timm(base / "densenet", "densenet121", growth_rate=8, block_config=[1, 1, 1, 1]),
    }


@pytest.fixture
def cache_dir(tmp_path: Path) -> Path:
    return tmp_path / "cache"
