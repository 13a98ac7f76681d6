"""Measuring in a fresh process: a benchmark re-runs its own script with `--one ...` so that the peak memory
and time it reports belong to the measured work alone; the child prints its result as the last JSON line."""

from __future__ import annotations

import json
import subprocess
import sys


def measure_in_child(script: str, *arguments) -> dict:
    child = subprocess.run([sys.executable, script, "--one", *map(str, arguments)], capture_output=True, text=True,
                           check=True)
    return json.loads(child.stdout.strip().splitlines()[-1])
