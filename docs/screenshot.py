"""Re-create docs/report.png: headless Chromium's screenshot of the report `medprobe demo` writes.

The demo's data are synthetic (no real patients); the pipeline is real: EfficientNet-Lite0/1/2's ImageNet
weights, extraction on this machine's CPU, probes, fine-tuning, report. Needs Debian's chromium.

    python docs/screenshot.py [--demo DIR] [--out PNG]   # runs `medprobe demo --out DIR` unless DIR has a report
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from medprobe.report.browser import screenshot

DOCS = Path(__file__).resolve().parent


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--demo", type=Path, default=Path("medprobe-demo"))
    parser.add_argument("--out", type=Path, default=DOCS / "report.png")
    args = parser.parse_args()
    report = args.demo / "results" / "report" / "report.html"
    if not report.is_file():
        subprocess.run([sys.executable, "-m", "medprobe", "demo", "--out", str(args.demo)], check=True)
    screenshot(report, args.out, width=1200, height=1700)
    print(args.out)


if __name__ == "__main__":
    main()
