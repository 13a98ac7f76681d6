"""The only stage that joins data, models and the cache: embed every image once into an HDF5 cache."""

from medprobe.stages import make_callable

make_callable(__name__)  # medprobe.extract(...) is medprobe.api.extract(...)
