"""`medprobe run experiment.toml`: a whole study grid from one file, resumably (see runner.py)."""
