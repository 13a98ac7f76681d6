"""Ctrl-C while DataLoader batches cross from workers: how many stops print a traceback, with the worker set-up
medprobe had before this round (Ctrl-C ignored, thread errors of ConnectionError/EOFError silenced, torch's
default fd-passing tensor sharing) and with today's (`runtime.workers.start_worker`: tensors sent by value),
side by side in one run.

    python benchmarks/ctrl_c_tracebacks.py [--stops 40]
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from fast_loader import stop_fast_loaders  # noqa: E402


def previous_worker_setup(_worker_id: int) -> None:
    """What medprobe's workers did before: the traceback came from multiprocessing's resource sharer, which
    reports through sys.excepthook, past this threading hook."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    default_hook = threading.excepthook

    def quiet_when_main_is_gone(args) -> None:
        if not issubclass(args.exc_type, (ConnectionError, EOFError)):
            default_hook(args)

    threading.excepthook = quiet_when_main_is_gone


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--stops", type=int, default=40)
    args = parser.parse_args()
    result = {}
    for name, init in (("before", "ctrl_c_tracebacks:previous_worker_setup"),
                       ("now", "medprobe.runtime.workers:start_worker")):
        outcomes = stop_fast_loaders(init, args.stops, import_path=str(Path(__file__).resolve().parent))
        result[name] = {"stops": args.stops, "with_traceback": sum("Traceback" in err for _, err in outcomes),
                        "exit_130": sum(code == 130 for code, _ in outcomes)}
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
