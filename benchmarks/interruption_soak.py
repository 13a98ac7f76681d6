"""Run the interruption tests again and again, so a stop that prints a traceback (or loses work) only now
and then shows up as a count instead of as a random CI failure.

Each round is one pytest process over the harnesses that stop medprobe at random points, at the soak's
stop counts (MEDPROBE_SOAK=1: more stops per harness than a suite run waits for): extraction
(SIGKILL and Ctrl-C, one DataLoader worker), fine-tuning (one worker), `medprobe run`, and the fast
Ctrl-C-while-batches-cross loop. Failing rounds keep their pytest output under --out.

    python benchmarks/interruption_soak.py --rounds 20 [--only extraction,ctrl_c] [--out soak-logs]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

HARNESSES = [
    "tests/test_interruptions.py::test_extraction_survives_stops_mid_run_and_kills_anywhere",
    "tests/test_interruptions.py::test_finetune_resume_after_stops_mid_training_equals_an_uninterrupted_run",
    "tests/test_run.py::test_run_resumes_after_kills_and_ends_with_the_same_results",
    "tests/test_runtime.py::test_ctrl_c_while_batches_cross_from_workers_prints_no_traceback",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--only", default="", help="comma-separated words; keep the harnesses naming one")
    parser.add_argument("--out", type=Path, default=Path("soak-logs"))
    args = parser.parse_args()
    words = [w for w in args.only.split(",") if w]
    harnesses = [h for h in HARNESSES if not words or any(w in h for w in words)]
    args.out.mkdir(parents=True, exist_ok=True)
    root = Path(__file__).resolve().parents[1]
    # the soak's stop counts (tests/test_interruptions.py SOAK): 12+12 mid-run and 6 anywhere, 5, 6
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "MEDPROBE_SOAK": "1"}
    passed = failed = 0
    for round_index in range(1, args.rounds + 1):
        began = time.perf_counter()
        result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *harnesses],
                                cwd=root, env=env, capture_output=True, text=True)
        seconds = time.perf_counter() - began
        if result.returncode == 0:
            passed += 1
        else:
            failed += 1
            (args.out / f"round-{round_index:02d}.log").write_text(result.stdout + result.stderr)
        print(f"round {round_index}/{args.rounds}: {'passed' if result.returncode == 0 else 'FAILED'} "
              f"in {seconds:.0f} s ({passed} passed, {failed} failed so far)", flush=True)
    print(f"soak: {passed} of {args.rounds} rounds passed, {failed} failed")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
