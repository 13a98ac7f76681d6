"""DataLoader workers that stop quietly on Ctrl-C, by construction.

A worker's batches reach the main process through shared memory. torch's default way of sharing it
(`file_descriptor`) passes each tensor's file descriptor over a socket served by a background thread in the
worker (multiprocessing's resource sharer); a Ctrl-C that lands while the main process is receiving one resets
that socket, and the thread prints a traceback through `sys.excepthook`. Workers here share by file name
(`file_system`): the main process opens the segment itself, there is no socket and no serving thread, and
torch's shm manager unlinks the segments when the processes are gone (SIGKILL included).

Exceptions that still reach a background thread's hook in a worker, or any thread of the main process once it
is shutting down after an interrupt, mean only that the other side is gone: they are kept off the terminal,
and printed in full under `--debug`.
"""

from __future__ import annotations

import os
import signal
import sys
import threading

DEBUG_VARIABLE = "MEDPROBE_DEBUG"  # set by the CLI for --debug; inherited by every worker, forked or spawned
SHUTDOWN_ERRORS = (ConnectionError, EOFError, BrokenPipeError)


def default_workers() -> int:
    return max(1, min(8, (os.cpu_count() or 2) - 1))


def set_debug(enabled: bool) -> None:
    if enabled:
        os.environ[DEBUG_VARIABLE] = "1"
    else:
        os.environ.pop(DEBUG_VARIABLE, None)


def debugging() -> bool:
    return os.environ.get(DEBUG_VARIABLE) == "1"


def start_worker(_worker_id: int) -> None:
    """`worker_init_fn` of every DataLoader: Ctrl-C is the main process's to handle (it saves the work and
    stops the workers); tensors are shared by file name; background-thread errors stay quiet."""
    import torch.multiprocessing

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    torch.multiprocessing.set_sharing_strategy("file_system")
    quiet_background_errors(only=SHUTDOWN_ERRORS)


def quiet_background_errors(*, only: tuple[type[BaseException], ...] = (BaseException,)) -> None:
    """Threads' uncaught exceptions of the given types go nowhere (everything under --debug). multiprocessing's
    own threads report through `sys.excepthook`, the others through `threading.excepthook`: both are covered."""
    if debugging():
        return
    thread_hook, process_hook = threading.excepthook, sys.excepthook

    def quiet_thread(args) -> None:
        if not issubclass(args.exc_type, only):
            thread_hook(args)

    def quiet_process(exc_type, value, traceback) -> None:
        if threading.current_thread() is threading.main_thread() or not issubclass(exc_type, only):
            process_hook(exc_type, value, traceback)

    threading.excepthook, sys.excepthook = quiet_thread, quiet_process
