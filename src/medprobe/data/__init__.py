"""Samples from a folder, a CSV manifest or a dataset spec file; image decoding. Knows nothing of models."""

from medprobe.data.images import decode_image, read_image_bytes
from medprobe.data.samples import Dataset, Sample
from medprobe.data.sources import load_dataset, resolve_data_argument

__all__ = ["Dataset", "Sample", "decode_image", "load_dataset", "read_image_bytes", "resolve_data_argument"]
