"""Intensity windows: how grayscale values (a DICOM's modality values after its Modality LUT or
RescaleSlope/Intercept, a 16-bit PNG's stored values, a volume's voxels) become 8-bit levels.

- `percentile:LOW,HIGH` (the default, 0.5 and 99.5): between the image's (or the whole volume's) own
  intensity percentiles. The spec form `[0.5, 99.5]` means the same.
- `hu:LEVEL,WIDTH`: a fixed window in Hounsfield units, [level - width/2, level + width/2] -> [0, 255],
  or `hu:NAME` for a named preset (see PRESETS).

Three windows in `channels` stack three windows of one image or volume as the RGB channels (the
multi-window encoding of CT for 2-D backbones). A window class registers itself under its kind.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from medprobe.data.images import WINDOW_PERCENTILES, apply_window, window_bounds
from medprobe.errors import MedprobeError

# (level, width) in HU, the usual radiology settings
PRESETS: dict[str, tuple[float, float]] = {
    "brain": (40.0, 80.0),
    "subdural": (75.0, 215.0),
    "lung": (-600.0, 1500.0),
    "mediastinum": (50.0, 350.0),
    "bone": (400.0, 1800.0),
    "abdomen": (50.0, 400.0),
    "liver": (30.0, 150.0),
}

WINDOW_KINDS: dict[str, type[Window]] = {}


class Window:
    """A subclass registers itself under its `kind`."""

    kind: ClassVar[str]

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        WINDOW_KINDS[cls.kind] = cls

    @classmethod
    def parse(cls, value: str, where: str) -> Window:
        raise NotImplementedError

    def bounds(self, values: np.ndarray) -> tuple[float, float]:
        """The (low, high) values that map to 0 and 255."""
        raise NotImplementedError

    @property
    def text(self) -> str:
        """How the window is named in fingerprints and cache keys."""
        raise NotImplementedError

    @property
    def is_default(self) -> bool:
        return self == DEFAULT_WINDOW


def _numbers(value: str, where: str, form: str) -> tuple[float, float]:
    try:
        first, second = (float(part) for part in value.split(","))
    except ValueError:
        raise MedprobeError(f"{where}: {value!r} is not two numbers; write {form}") from None
    return first, second


@dataclass(frozen=True)
class PercentileWindow(Window):
    kind: ClassVar[str] = "percentile"
    low: float = WINDOW_PERCENTILES[0]
    high: float = WINDOW_PERCENTILES[1]

    def __post_init__(self) -> None:
        if not 0 <= self.low < self.high <= 100:
            raise MedprobeError(f"window percentile:{self.low:g},{self.high:g} needs 0 <= low < high <= 100, "
                                "e.g. percentile:0.5,99.5")

    @classmethod
    def parse(cls, value: str, where: str) -> Window:
        return cls(*_numbers(value, where, "percentile:LOW,HIGH, e.g. percentile:0.5,99.5"))

    def bounds(self, values: np.ndarray) -> tuple[float, float]:
        return window_bounds(values, (self.low, self.high))

    @property
    def text(self) -> str:
        return f"{self.low:g}-{self.high:g}"


@dataclass(frozen=True)
class HounsfieldWindow(Window):
    kind: ClassVar[str] = "hu"
    level: float
    width: float

    def __post_init__(self) -> None:
        if self.width <= 0:
            raise MedprobeError(f"window hu:{self.level:g},{self.width:g} needs a width above 0, e.g. hu:40,80")

    @classmethod
    def parse(cls, value: str, where: str) -> Window:
        if value.strip().lower() in PRESETS:
            return cls(*PRESETS[value.strip().lower()])
        if "," not in value:
            raise MedprobeError(f"{where}: hu:{value} is not a preset ({', '.join(PRESETS)}) nor LEVEL,WIDTH "
                                "such as hu:40,80")
        return cls(*_numbers(value, where, "hu:LEVEL,WIDTH, e.g. hu:40,80"))

    def bounds(self, values: np.ndarray) -> tuple[float, float]:
        return self.level - self.width / 2, self.level + self.width / 2

    @property
    def text(self) -> str:
        return f"hu:{self.level:g},{self.width:g}"


DEFAULT_WINDOW = PercentileWindow()
DEFAULT_WINDOWS = (DEFAULT_WINDOW,)


def looks_like_window(value: object) -> bool:
    return isinstance(value, str) and value.partition(":")[0].strip().lower() in WINDOW_KINDS


def parse_window(value: object, where: str) -> Window:
    """`"hu:40,80"`, `"hu:brain"`, `"percentile:1,99"`, or the list form `[0.5, 99.5]` (percentiles)."""
    if isinstance(value, list) and len(value) == 2 and all(isinstance(v, (int, float)) for v in value):
        try:
            return PercentileWindow(float(value[0]), float(value[1]))
        except MedprobeError as exc:
            raise MedprobeError(f"{where}: {exc}") from None
    if not looks_like_window(value):
        raise MedprobeError(f"{where}: window {value!r} is not one of {', '.join(f'{k}:...' for k in WINDOW_KINDS)} "
                            f"(e.g. \"hu:40,80\", \"hu:brain\", [0.5, 99.5]); presets: {', '.join(PRESETS)}")
    kind, _, rest = str(value).partition(":")
    try:
        return WINDOW_KINDS[kind.strip().lower()].parse(rest, where)
    except MedprobeError as exc:
        raise MedprobeError(f"{where}: {exc}" if not str(exc).startswith(where) else str(exc)) from None


def windows_text(windows: Sequence[Window]) -> str:
    return "+".join(w.text for w in windows)


def refuse_colour(source, colour: str, windows: Sequence[Window]) -> None:
    """A non-default window on a colour image is an error (windows map grayscale intensities)."""
    if tuple(windows) != DEFAULT_WINDOWS:
        raise MedprobeError(f"image {source} is colour ({colour}); the window {windows_text(windows)} applies to "
                            "grayscale images only: remove window/channels from the spec or leave this file out")


def window_planes(values: np.ndarray, windows: Sequence[Window],
                  bounds: Sequence[tuple[float, float]] | None = None) -> np.ndarray:
    """Grayscale values -> (..., 3) uint8: one window replicated, or three windows stacked as channels.
    `bounds` (one per window) come from a whole volume when `values` is one of its slices."""
    bounds = bounds or [w.bounds(values) for w in windows]
    planes = [apply_window(values, *b) for b in bounds]
    return np.stack(planes * 3 if len(planes) == 1 else planes, axis=-1)
