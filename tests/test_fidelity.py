"""fp32 features through medprobe (workers, transform, cache) match each backbone's reference path:
the HF image processor + model, or timm's eval transform + model. Cosine >= 0.9999 per image."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from medprobe.cache import read_features
from medprobe.data import load_dataset
from medprobe.extract.runner import extract


@pytest.fixture
def photo_folder(tmp_path):
    from sklearn.datasets import load_sample_images

    root = tmp_path / "photos"
    sizes = [(120, 97), (83, 130), (101, 101), (64, 91)]  # odd margins exercise crop rounding
    for i, (w, h) in enumerate(sizes):
        for label, photo in enumerate(load_sample_images().images):
            (root / f"c{label}").mkdir(parents=True, exist_ok=True)
            Image.fromarray(photo).resize((w, h), Image.Resampling.BILINEAR).save(root / f"c{label}" / f"{i}.png")
    return root


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def assert_same_pixels(model_folder, images, reference: torch.Tensor) -> None:
    """The sharp check: medprobe's input tensors equal the reference ones (float rounding aside)."""
    from medprobe.models.backbone import resolve_preprocessing
    from medprobe.models.registry import resolve_model
    from medprobe.models.transforms import ImageTransform

    transform = ImageTransform(resolve_preprocessing(resolve_model(str(model_folder))))
    ours = torch.stack([transform(image) for image in images])
    assert ours.shape == reference.shape
    assert (ours - reference).abs().max() < 1e-4


def medprobe_features(folder, model, cache_dir, pool):
    dataset = load_dataset(folder)
    report = extract(dataset=dataset, model=str(model), cache_dir=cache_dir, precision="fp32", device="cpu",
                     workers=0, batch_size=3, show_progress=False)
    return dataset, read_features(report.path, dataset.ids, pool)


@pytest.mark.parametrize("fixture", ["tiny_dinov2", "tiny_dinov2_reg", "tiny_vit"])
def test_transformers_reference(fixture, request, photo_folder, cache_dir):
    from transformers import AutoImageProcessor, AutoModel

    folder = request.getfixturevalue(fixture)
    dataset, ours = medprobe_features(photo_folder, folder, cache_dir, "cls")
    processor = AutoImageProcessor.from_pretrained(folder)
    model = AutoModel.from_pretrained(folder).eval()
    images = [Image.open(s.path).convert("RGB") for s in dataset.samples]
    pixels = processor(images=images, return_tensors="pt")["pixel_values"]
    assert_same_pixels(folder, images, pixels)
    with torch.inference_mode():
        reference = model(pixel_values=pixels).last_hidden_state[:, 0].numpy()
    assert cosine(ours, reference).min() >= 0.9999


@pytest.mark.parametrize("name", ["resnet", "vit", "densenet"])
def test_timm_reference(name, tiny_timm_models, photo_folder, cache_dir):
    import timm

    folder = tiny_timm_models[name]
    pool = "cls" if name == "vit" else "gap"
    dataset, ours = medprobe_features(photo_folder, folder, cache_dir, pool)
    model = timm.create_model(f"local-dir:{folder}", pretrained=True, num_classes=0).eval()
    transform = timm.data.create_transform(**timm.data.resolve_data_config({}, model=model))
    images = [Image.open(s.path).convert("RGB") for s in dataset.samples]
    pixels = torch.stack([transform(image) for image in images])
    assert_same_pixels(folder, images, pixels)
    with torch.inference_mode():
        reference = model.forward_head(model.forward_features(pixels), pre_logits=True)
        if name == "vit":
            reference = model.forward_features(pixels)[:, 0]
    assert cosine(ours, reference.numpy()).min() >= 0.9999
