"""How long the README's two opening commands take after the install, on this machine: `medprobe demo` (in a
fresh temporary folder, as a new user runs it) and the test suite (`python -m pytest -q`, the README's test
command, in this checkout). One JSON line each: wall seconds and what ran (the demo's step counts, pytest's
summary line). These are the figures README.md quotes; the machine's cores are printed with them.

    python benchmarks/wall_times.py --demo --suite [--demo-output demo.txt]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEMO_STEPS = re.compile(r"(\d+) steps: (\d+) already done, (\d+) ran, (\d+) failed")
PYTEST_SUMMARY = re.compile(r"^=*\s*(\d+ passed.*) in [\d.]+s", re.MULTILINE)


def timed(command: list[str], cwd: Path) -> tuple[float, str]:
    started = time.perf_counter()
    finished = subprocess.run(command, cwd=cwd, capture_output=True, text=True, env=os.environ | {"COLUMNS": "200"})
    seconds = time.perf_counter() - started
    if finished.returncode != 0:
        tail = (finished.stdout + finished.stderr)[-3000:]
        sys.exit(f"{' '.join(command)} exited {finished.returncode}:\n{tail}")
    return seconds, finished.stdout


def demo(keep: Path | None) -> dict:
    with tempfile.TemporaryDirectory() as folder:
        seconds, output = timed([str(Path(sys.executable).with_name("medprobe")), "demo"], Path(folder))
    if keep is not None:  # what it printed: README.md's demo block is copied from it
        keep.write_text(output)
    steps = DEMO_STEPS.search(output)
    if steps is None:
        sys.exit(f"medprobe demo printed no step count:\n{output[-2000:]}")
    total, done, ran, failed = map(int, steps.groups())
    return {"job": "medprobe demo", "seconds": round(seconds, 1), "steps": total, "ran": ran, "failed": failed}


def suite() -> dict:
    seconds, output = timed([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"], ROOT)
    summary = PYTEST_SUMMARY.search(output)
    return {"job": "python -m pytest -q", "seconds": round(seconds, 1),
            "summary": summary.group(1) if summary else output.strip().splitlines()[-1]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--demo", action="store_true", help="time medprobe demo in a fresh folder")
    parser.add_argument("--suite", action="store_true", help="time the test suite")
    parser.add_argument("--demo-output", type=Path, help="also save what the demo printed to this file")
    args = parser.parse_args()
    if not (args.demo or args.suite):
        parser.error("say --demo, --suite or both")
    for wanted, job in ((args.demo, lambda: demo(args.demo_output)), (args.suite, suite)):
        if wanted:
            print(json.dumps({**job(), "cpus": os.cpu_count(), "date": time.strftime("%Y-%m-%d")}), flush=True)


if __name__ == "__main__":
    main()
