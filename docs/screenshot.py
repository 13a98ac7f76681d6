"""Re-create docs/report.png: headless Chromium's screenshot of the report `medprobe demo` writes.

The demo's data are synthetic (no real patients); the pipeline is real: efficientnet-lite0's ImageNet
weights, extraction on this machine's CPU, probes, fine-tuning, report. Needs Debian's chromium.

    python docs/screenshot.py [--demo DIR]     # runs `medprobe demo --out DIR` unless DIR has a report
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--demo", type=Path, default=Path("medprobe-demo"))
    args = parser.parse_args()
    report = args.demo / "results" / "report" / "report.html"
    if not report.is_file():
        subprocess.run([sys.executable, "-m", "medprobe", "demo", "--out", str(args.demo)], check=True)
    chromium = next((found for name in ("chromium", "chromium-browser", "google-chrome")
                     if (found := shutil.which(name))), None)
    if chromium is None:
        sys.exit("no chromium binary; apt-get install chromium")
    subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                    "--window-size=1200,1700", f"--screenshot={DOCS / 'report.png'}", report.resolve().as_uri()],
                   check=True, capture_output=True)
    print(DOCS / "report.png")


if __name__ == "__main__":
    main()
