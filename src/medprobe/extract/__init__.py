"""The only stage that joins data, models and the cache: embed every image once into an HDF5 cache."""
