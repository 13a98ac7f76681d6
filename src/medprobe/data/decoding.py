"""A dataset spec's decoding options, for images and volumes alike:

  window   = "hu:40,80" | "hu:brain" | "percentile:1,99" | [0.5, 99.5]    (default: percentile 0.5..99.5)
  channels = ["hu:brain", "hu:subdural", "hu:bone"]   (three windows of one image/volume as the RGB channels;
                                                       `channels` naming manifest columns is a volume option)
  frames   = "first" | "all"                          (multi-frame DICOM: the first frame, or each frame as a
                                                       sample `file.dcm#frame:3`, grouped by file)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from medprobe.data.windows import DEFAULT_WINDOWS, Window, looks_like_window, parse_window, windows_text
from medprobe.errors import MedprobeError

DECODING_KEYS = {"window", "channels", "frames"}
FRAMES = ("first", "all")


@dataclass(frozen=True)
class DecodingOptions:
    windows: tuple[Window, ...] = DEFAULT_WINDOWS
    all_frames: bool = False
    window_channels: bool = False  # `channels` named windows, not manifest columns

    @property
    def text(self) -> str:
        """The non-default options, as part of the dataset's cache key ("" for the defaults)."""
        parts = [] if self.windows == DEFAULT_WINDOWS else [f"window={windows_text(self.windows)}"]
        return ";".join(parts + (["frames=all"] if self.all_frames else []))


def parse_decoding(spec: dict, path: Path) -> DecodingOptions:
    channels = spec.get("channels")
    window_channels = isinstance(channels, list) and any(looks_like_window(c) for c in channels)
    if window_channels:
        if len(channels) != 3 or not all(looks_like_window(c) for c in channels):
            raise MedprobeError(f"{path}: channels = {channels!r} must name three windows, e.g. "
                                '["hu:brain", "hu:subdural", "hu:bone"] (or three manifest columns)')
        if "window" in spec:
            raise MedprobeError(f"{path}: give window or three window channels, not both")
        windows = tuple(parse_window(c, f"{path}: channels") for c in channels)
    elif "window" in spec:
        windows = (parse_window(spec["window"], f"{path}: window"),)
    else:
        windows = DEFAULT_WINDOWS
    frames = str(spec.get("frames", "first")).lower()
    if frames not in FRAMES:
        raise MedprobeError(f"{path}: frames = {spec['frames']!r} is not one of {', '.join(FRAMES)}")
    return DecodingOptions(windows=windows, all_frames=frames == "all", window_channels=window_channels)
