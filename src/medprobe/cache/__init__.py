"""The HDF5 feature store (never imports torch): layout, paths, freshness, reading and writing."""

from medprobe.cache.freshness import FreshnessPlan, plan_rows
from medprobe.cache.paths import cache_key, cache_path, list_cache_files
from medprobe.cache.store import (
    CacheContents,
    CacheWriter,
    cache_lock,
    feature_rows,
    iter_feature_blocks,
    read_contents,
    read_features,
)

__all__ = [
    "CacheContents", "CacheWriter", "FreshnessPlan", "cache_key", "cache_lock", "cache_path",
    "feature_rows", "iter_feature_blocks", "list_cache_files", "plan_rows", "read_contents", "read_features",
]
