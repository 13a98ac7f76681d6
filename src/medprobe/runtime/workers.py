"""DataLoader workers that stop quietly on Ctrl-C, by construction.

torch hands a worker's tensors to the main process through shared memory: by default it passes each
tensor's file descriptor over a socket served by a background thread in the worker (multiprocessing's
resource sharer), and a Ctrl-C that lands while the main process is receiving one resets that socket: the
thread printed a ConnectionResetError traceback (in a loop stopping a fast loader, about half the time).
Sharing by file name instead leaves a shm manager between the processes, and a process interrupted
mid-transfer was seen to hang at exit under load. So workers here send tensors *by value*: their bytes
travel pickled through the DataLoader's pipe, and the main process rebuilds them as ordinary tensors.
No socket, no serving thread, no shared segment to clean up; the price is one copy of each batch, which
is small next to decoding and the forward pass.

Exceptions that still reach a background thread's hook in a worker, or any thread of the main process once
it is shutting down after an interrupt, mean only that the other side is gone: they are kept off the
terminal, and printed in full under `--debug`.
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
    stops the workers); tensors travel by value; background-thread errors stay quiet."""
    from multiprocessing.reduction import ForkingPickler

    import torch

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    ForkingPickler.register(torch.Tensor, tensor_by_value)  # this worker only: replaces torch's shared-memory reducer
    quiet_background_errors(only=SHUTDOWN_ERRORS)


def tensor_by_value(tensor):
    """Pickle a tensor as a numpy array of its bytes (so any dtype, bf16 included), rebuilt by `tensor_from_array`."""
    import torch

    flat = tensor.detach().cpu().contiguous().reshape(-1)
    return tensor_from_array, (flat.view(torch.uint8).numpy(), flat.dtype, tuple(tensor.shape))


def tensor_from_array(array, dtype, shape: tuple[int, ...]):
    import torch

    return torch.from_numpy(array).view(dtype).reshape(shape)


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
