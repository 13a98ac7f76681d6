"""GPU-side JPEG decoding (`medprobe extract --decode gpu`).

On a big GPU a small backbone's forward pass outruns CPU JPEG decoding plus resizing (BENCHMARKS.md:
extraction on an H200 ran at 0.2-0.45 of the bare forward). With `--decode gpu` the loader workers only
read each file (its bytes also give the content fingerprint, as on the CPU path) and hand JPEG bytes to
the main process, which decodes a whole batch with nvJPEG (torchvision.io.decode_jpeg on the device) and
resizes, crops and normalises it there with the backbone's preprocessing. Anything else (PNG, TIFF,
DICOM, volume slices, a JPEG the GPU decoder refuses) is decoded and preprocessed on the CPU as usual.

The pixels differ slightly from the CPU path's (nvJPEG's IDCT and torchvision's resize are not
libjpeg's and PIL's: a few 8-bit levels), so the cache records `decode = "gpu"`.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader
from torchvision.io import ImageReadMode, decode_jpeg

from medprobe.data.images import decode_image, read_image_bytes
from medprobe.data.reader import read_unit
from medprobe.data.samples import Sample
from medprobe.data.signature import fingerprint_bytes, sample_stat
from medprobe.errors import MedprobeError
from medprobe.extract.loader import SampleStream
from medprobe.models.transforms import TENSOR_RESIZE_MODES, ImageTransform
from medprobe.runtime.workers import start_worker

DECODE_CHOICES = ("cpu", "gpu")
DECODE_DEVICE_TYPES = ("cuda",)  # where --decode gpu runs (tests widen it to exercise the path on a CPU)
JPEG_MAGIC = b"\xff\xd8\xff"


def resolve_decode(decode: str, device: torch.device) -> torch.device | None:
    """The device that decodes JPEGs, or None for CPU decoding in the loader workers."""
    if decode not in DECODE_CHOICES:
        raise MedprobeError(f"--decode {decode!r} is not one of {', '.join(DECODE_CHOICES)}")
    if decode == "cpu":
        return None
    if device.type not in DECODE_DEVICE_TYPES:
        raise MedprobeError(f"--decode gpu needs a CUDA device, but extraction runs on {device}; use --decode cpu")
    return device


class EncodedStream(SampleStream):
    """Like SampleStream, but a JPEG image comes back as its file's bytes."""

    def __iter__(self):
        for unit in self.my_units():
            sample = self.samples[unit[0]]
            if sample.plain_file:
                try:
                    stat = sample_stat(sample, self.root)
                    data = read_image_bytes(sample.path)
                except (MedprobeError, OSError) as exc:
                    yield unit[0], None, None, "", "", str(exc)
                    continue
                if data[:3] == JPEG_MAGIC:
                    yield unit[0], None, data, fingerprint_bytes(data), stat, None
                    continue
            for item in read_unit(self.samples, unit, self.root):  # reads the file again: rare formats only
                if item.error is not None:
                    yield item.position, None, None, "", "", item.error
                else:
                    yield item.position, self.transform(item.image), None, item.fingerprint, item.stat, None


def collate_encoded(items: list[tuple]) -> dict:
    """A batch travels from a worker as a few tensors (one of all the JPEG bytes, one of the CPU-decoded
    pixels), not one per image: each tensor crossing processes costs a shared-memory handle."""
    good = [item for item in items if item[5] is None]
    jpeg_slots = [i for i, item in enumerate(good) if item[2] is not None]
    cpu_slots = [i for i, item in enumerate(good) if item[2] is None]
    blobs = [good[i][2] for i in jpeg_slots]
    return {
        "positions": [item[0] for item in good],
        "fingerprints": [item[3] for item in good],
        "stats": [item[4] for item in good],
        "errors": [(item[0], item[5]) for item in items if item[5] is not None],
        "jpeg_slots": jpeg_slots,
        "jpeg_sizes": [len(blob) for blob in blobs],
        "jpeg_bytes": torch.frombuffer(bytearray(b"".join(blobs)), dtype=torch.uint8) if blobs else None,
        "cpu_slots": cpu_slots,
        "cpu_pixels": torch.stack([good[i][1] for i in cpu_slots]) if cpu_slots else None,
    }


class DeviceDecodeLoader:
    """Batches in the format of extract.loader.collate (one transform), with pixels already on the device."""

    def __init__(self, loader: DataLoader, samples: list[Sample], transform: ImageTransform,
                 device: torch.device) -> None:
        self.loader, self.samples, self.transform, self.device = loader, samples, transform, device

    def __iter__(self) -> Iterator[dict]:
        for batch in self.loader:
            yield self.decode(batch)

    def decode(self, batch: dict) -> dict:
        slots: list[torch.Tensor | None] = [None] * len(batch["positions"])
        errors = list(batch["errors"])
        if batch["cpu_slots"]:
            cpu_pixels = batch["cpu_pixels"].to(self.device, non_blocking=True)
            for k, slot in enumerate(batch["cpu_slots"]):
                slots[slot] = cpu_pixels[k]
        if batch["jpeg_slots"]:
            blobs = list(torch.split(batch["jpeg_bytes"], batch["jpeg_sizes"]))
            paths = [self.samples[batch["positions"][slot]].path for slot in batch["jpeg_slots"]]
            decoded = self._decode_jpegs(blobs, paths)
            errors += [(batch["positions"][slot], image) for slot, image in zip(batch["jpeg_slots"], decoded,
                                                                                 strict=True) if isinstance(image, str)]
            good = [(slot, image) for slot, image in zip(batch["jpeg_slots"], decoded, strict=True)
                    if not isinstance(image, str)]
            if good:  # resize and crop per image (sizes differ), normalise the batch at once
                cropped = torch.stack([self.transform.crop(self.transform.resize_tensor(image)) for _, image in good])
                normalised = self.transform.normalise(cropped)
                for k, (slot, _) in enumerate(good):
                    slots[slot] = normalised[k]
        keep = [i for i, pixels in enumerate(slots) if pixels is not None]
        return {
            "positions": [batch["positions"][i] for i in keep],
            "pixels": {0: torch.stack([slots[i] for i in keep])} if keep else {},
            "rows": {0: list(range(len(keep)))} if keep else {},
            "fingerprints": [batch["fingerprints"][i] for i in keep],
            "stats": [batch["stats"][i] for i in keep],
            "errors": errors,
        }

    def _decode_jpegs(self, encoded: list[torch.Tensor], paths: list[Path]) -> list[torch.Tensor | str]:
        """One batched decode; if the device refuses the batch, image by image, then on the CPU (PIL) for
        the ones it cannot decode. A file no decoder reads becomes its error message."""
        if not encoded:
            return []
        try:
            return list(decode_jpeg(encoded, mode=ImageReadMode.RGB, device=self.device))
        except RuntimeError:
            pass
        out: list[torch.Tensor | str] = []
        for data, path in zip(encoded, paths, strict=True):
            try:
                out.append(decode_jpeg(data, mode=ImageReadMode.RGB, device=self.device))
            except RuntimeError:
                try:
                    image = decode_image(data.numpy().tobytes(), path)
                except MedprobeError as exc:
                    out.append(str(exc))
                    continue
                out.append(torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1).to(self.device))
        return out


def make_device_decode_loader(samples: list[Sample], root: Path, transform: ImageTransform, *,
                              device: torch.device, batch_size: int, workers: int) -> DeviceDecodeLoader:
    interpolation = transform.prep.interpolation
    if transform.prep.resize is not None and interpolation not in TENSOR_RESIZE_MODES:
        raise MedprobeError(f"--decode gpu: the backbone resizes with {interpolation}, which only PIL implements; "
                            "use --decode cpu")
    stream = EncodedStream(samples, root, [transform])
    workers = min(workers, len(stream.units))
    loader = DataLoader(stream, batch_size=batch_size, num_workers=workers, collate_fn=collate_encoded,
                        prefetch_factor=4 if workers > 0 else None, worker_init_fn=start_worker)
    return DeviceDecodeLoader(loader, samples, transform, device)
