"""A child process whose DataLoader sends small batches as fast as it can, so the main process spends most of
its time receiving them and a Ctrl-C lands mid-transfer. Used by tests/test_runtime.py and
benchmarks/ctrl_c_tracebacks.py (which also runs it with the worker set-up medprobe had before)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np

CHILD = r"""
import contextlib, faulthandler, signal, sys, torch
from torch.utils.data import DataLoader, IterableDataset
import {module} as setup

faulthandler.register(signal.SIGUSR1, all_threads=True)  # the harness asks for every thread's stack on a hang
init = setup.{function}
# medprobe's loop defers Ctrl-C to the point between batches; an older set-up has no such guard
guard = getattr(setup, "deferred_interrupts", contextlib.nullcontext)
point = getattr(setup, "interruption_point", lambda: None)

class Counting(IterableDataset):
    def __iter__(self):
        for i in range(10**9):
            yield torch.full((3, 8, 8), float(i))

try:
    with guard():
        for i, batch in enumerate(DataLoader(Counting(), batch_size=2, num_workers=2, worker_init_fn=init)):
            if i == 0:
                print("receiving", flush=True)
            point()
except KeyboardInterrupt:
    print("interrupted: one line", file=sys.stderr)
    sys.exit(130)
"""


def stop_fast_loaders(init: str, stops: int, seed: int = 0, timeout: float = 120,
                      import_path: str | None = None, forked: bool = False) -> list[tuple[int, str]]:
    """Start the child `stops` times with worker_init_fn `init` ("module:function"), Ctrl-C it at a random
    moment while batches flow; (exit code, stderr) of each. `import_path`: a folder the child imports `init` from.
    `forked`: fork each child from tests/forked_commands.py's server, which has imported torch already."""
    module, function = init.split(":")
    code = CHILD.format(module=module, function=function)
    rng, outcomes = np.random.default_rng(seed), []
    env = {**os.environ}
    if import_path:
        env["PYTHONPATH"] = os.pathsep.join(p for p in (import_path, env.get("PYTHONPATH")) if p)
    for _ in range(stops):
        if forked:
            from forked_commands import ForkedCommand

            assert import_path is None, "the server imports from its own path"
            process = ForkedCommand((), code=code)
            assert process.wait_for_output("receiving", timeout)
        else:
            process = subprocess.Popen([sys.executable, "-c", code], start_new_session=True, text=True,
                                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
            assert process.stdout.readline().strip() == "receiving"
        time.sleep(rng.uniform(0.0, 0.3))
        os.killpg(process.pid, signal.SIGINT)
        try:
            _, err = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:  # hung: every thread's stack (faulthandler), then kill the group
            os.killpg(process.pid, signal.SIGUSR1)
            time.sleep(2)
            os.killpg(process.pid, signal.SIGKILL)
            _, err = process.communicate()
            raise AssertionError(f"still running {timeout:.0f} s after Ctrl-C; its threads:\n{err}") from None
        outcomes.append((process.returncode, err))
    return outcomes
