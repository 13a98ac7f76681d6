"""The HDF5 layout, in one place (documented in README.md, "The feature cache").

    /ids                  (N,)   utf-8 strings: sample ids (path relative to the dataset root)
    /source_fingerprint   (N,)   32-char blake2b-128 hex digest of the source file's bytes (for a volume
                                 slice: of its volumes' digests and decoding options)
    /source_stat          (N,)   "size:mtime_ns" of the source file, a cheap first freshness check (a slice:
                                 "rel/path.nii.gz=size:mtime_ns[;...]|window=...", see data/signature.py)
    /done                 (N,)   uint8: 1 once the row's features are written
    /features/<pool>      (N, D) float16, chunked by rows, uncompressed; one per pool (cls, mean, cls4, gap)
    attributes of /       provenance (see PROVENANCE_KEYS); JSON strings for nested values
"""

from __future__ import annotations

FORMAT_VERSION = 1
IDS = "ids"
FINGERPRINT = "source_fingerprint"
STAT = "source_stat"
DONE = "done"
FEATURES = "features"
ROW_CHUNK = 256

PROVENANCE_KEYS = (
    "format_version", "medprobe_version", "model_name", "backend", "source", "revision_requested",
    "revision_resolved", "weights_identity", "num_parameters", "preprocessing", "precision", "device",
    "device_name", "pools", "embed_dims", "dataset_name", "dataset_root", "library_versions", "created_at",
    "updated_at", "extract_seconds", "images_extracted", "images_per_second", "peak_memory_mb",
    "batch_size", "workers", "dataset_root_relative", "skipped", "decode", "processes", "family", "licence",
    "requested", "extract_stage_seconds", "extract_bottleneck",
)
JSON_ATTRS = ("preprocessing", "pools", "embed_dims", "library_versions", "skipped", "requested",
              "extract_stage_seconds")
