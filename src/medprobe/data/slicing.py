"""A dataset spec's volume options, and the expansion of each volume row into slice samples.

Spec keys (all optional; any of them makes the rows volumes):
  axis     = "axial" | "coronal" | "sagittal"           (default axial, in canonical RAS)
  slices   = "all" | "middle:K" | "every:N" | "nonzero:F" | "mask" | "mask-top:K"   (default all)
  volume   = 0                                           (which volume of a 4-D file)
  channels = ["t1", "t1c", "flair"]                      (stack three co-registered columns as RGB)
  mask     = "mask"                                      (the mask column, for mask and mask-top:K)
`window` and window `channels` (data.decoding) apply to volumes as to images; a volume's window bounds come
from the whole volume.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from medprobe.data.samples import Sample, VolumeSlice
from medprobe.data.selection_memo import memo_key, recall, remember
from medprobe.data.volumes import (
    AXES,
    SliceRule,
    canonical_shape,
    is_volume_source,
    load_header,
    parse_slice_rule,
    read_files,
    read_volume,
    select_slices,
    spatial_image,
)
from medprobe.data.windows import DEFAULT_WINDOWS, Window
from medprobe.errors import MedprobeError

VOLUME_KEYS = {"axis", "slices", "volume", "channels", "mask"}


@dataclass(frozen=True)
class VolumeOptions:
    axis: str = "axial"
    rule: SliceRule = SliceRule("all")
    windows: tuple[Window, ...] = DEFAULT_WINDOWS
    volume_index: int | None = None
    channels: tuple[str, ...] = ()
    mask_column: str = "mask"


def parse_volume_options(spec: dict, path: Path, windows: tuple[Window, ...] = DEFAULT_WINDOWS,
                         channel_columns: bool = True) -> VolumeOptions | None:
    """None when the spec has no volume key (`channels` counts only when it names columns)."""
    keys = VOLUME_KEYS & set(spec) - (set() if channel_columns else {"channels"})
    if not keys:
        return None
    axis = str(spec.get("axis", "axial")).lower()
    if axis not in AXES:
        raise MedprobeError(f"{path}: axis = {axis!r} is not one of {', '.join(AXES)}")
    volume = spec.get("volume")
    if volume is not None and (not isinstance(volume, int) or volume < 0):
        raise MedprobeError(f"{path}: volume = {volume!r} must be a whole number >= 0 (the index in a 4-D file)")
    channels = spec.get("channels", []) if channel_columns else []
    if not isinstance(channels, list) or len(channels) not in (0, 3) or len(set(channels)) != len(channels):
        raise MedprobeError(f"{path}: channels = {channels!r} must name three different manifest columns, "
                            'e.g. ["t1", "t1c", "flair"], stacked as the RGB channels')
    rule = parse_slice_rule(spec.get("slices", "all"), str(path))
    if channels and "manifest" not in spec:
        raise MedprobeError(f"{path}: channels needs a manifest (a CSV with one column per modality)")
    if channels and len(windows) > 1:
        raise MedprobeError(f"{path}: channels of three modalities take one window each; give window = \"...\", "
                            "not three windows")
    if rule.needs_mask and "manifest" not in spec:
        raise MedprobeError(f"{path}: slices = {spec['slices']!r} needs a manifest with a mask column")
    return VolumeOptions(axis=axis, rule=rule, windows=windows, volume_index=volume,
                         channels=tuple(str(c) for c in channels), mask_column=str(spec.get("mask", "mask")))


def _plane_count(path: Path, options: VolumeOptions) -> tuple[int, int, int]:
    """The canonical shape of a volume's 3-D image, from its header."""
    return canonical_shape(spatial_image(load_header(path), path, options.volume_index))


def _voxels(path: Path, volume_index: int | None):
    return read_volume(read_files(path), path, volume_index).voxels


def _row_slices(row: dict[str, str], root: Path, options: VolumeOptions, where: str,
                attributes: tuple[tuple[str, str], ...]) -> list[Sample]:
    columns = options.channels or ("path",)
    channels = tuple((root / row[c]).expanduser() for c in columns)
    for column, path in zip(columns, channels, strict=True):
        if not is_volume_source(path):
            raise MedprobeError(f"{where}: {column} {path} is not a volume (.nii, .nii.gz or a DICOM series folder); "
                                "a spec with volume options takes volumes only")
    shapes = [_plane_count(path, options) for path in channels]
    if any(shape != shapes[0] for shape in shapes):
        described = ", ".join(f"{c}={s}" for c, s in zip(columns, shapes, strict=True))
        raise MedprobeError(f"{where}: the stacked modalities differ in shape ({described}); co-register them")
    length = shapes[0][AXES[options.axis]]
    mask_path = (root / row[options.mask_column]).expanduser() if options.rule.needs_mask else None
    key = None
    if options.rule.needs_voxels:
        rule = f"{options.rule.kind}:{options.rule.value}"
        key = memo_key([channels[0], *([mask_path] if mask_path else [])], rule, options.axis, options.volume_index)
    indices = recall(key)
    if indices is None:
        voxels = _voxels(channels[0], options.volume_index) if options.rule.kind == "nonzero" else None
        mask = None
        if mask_path is not None:
            mask = _voxels(mask_path, None)
            if mask.shape != shapes[0]:
                raise MedprobeError(f"{where}: mask {mask_path} has shape {mask.shape}, the volume {shapes[0]}; "
                                    "the mask must be drawn on the same grid")
        indices = select_slices(options.rule, length, axis=options.axis, voxels=voxels, mask=mask)
        remember(key, indices)
    relative = Path(row[columns[0]]).as_posix()
    group = row.get("group") or relative  # slices of one volume never land in different splits
    return [
        Sample(id=f"{relative}#{options.axis}:{index}", path=channels[0], label=row["label"], group=group,
               split=row.get("split") or None, windows=options.windows, attributes=attributes,
               slice=VolumeSlice(axis=options.axis, index=index, channels=channels, volume_index=options.volume_index))
        for index in indices
    ]


def expand_volumes(rows: list[dict[str, str]], *, root: Path, options: VolumeOptions, where,
                   attributes: list[tuple[tuple[str, str], ...]]) -> list[Sample]:
    """Every row's selected slices, in row order (headers only, unless the rule needs voxels); `attributes`:
    each row's sample attributes."""
    workers = 4 if options.rule.needs_voxels else 8
    with ThreadPoolExecutor(max_workers=workers) as pool:
        per_row = list(pool.map(lambda i: _row_slices(rows[i], root, options, where(i), attributes[i]),
                                range(len(rows))))
    return [sample for samples in per_row for sample in samples]
