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


class _Deferred:
    """The state of deferred_interrupts(): whether a Ctrl-C came in, and how deep the nesting is."""

    depth = 0
    pending = False
    previous = None


def _defer(signum, frame) -> None:
    if _Deferred.pending:  # a second Ctrl-C: the user insists, stop at once
        raise KeyboardInterrupt
    _Deferred.pending = True


class deferred_interrupts:  # noqa: N801 - used as a context manager, like contextlib's
    """Within: Ctrl-C only sets a flag, and `interruption_point()` (called between batches) raises it as
    KeyboardInterrupt. An interrupt raised anywhere else in the main thread can land inside DataLoader's
    queue code between a lock's acquire and its `with` block: the lock stays held and the loader's shutdown,
    which puts on the same queue, waits for it forever (seen once in 90 stops of tests/fast_loader.py). A
    pending Ctrl-C still raises on leaving the block; a second one raises at once. Main thread only
    (elsewhere, and nested, it does nothing)."""

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            if _Deferred.depth == 0:
                _Deferred.pending, _Deferred.previous = False, signal.signal(signal.SIGINT, _defer)
            _Deferred.depth += 1
        return self

    def __exit__(self, exc_type, exc, traceback) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        _Deferred.depth -= 1
        if _Deferred.depth == 0:
            signal.signal(signal.SIGINT, _Deferred.previous)
            pending, _Deferred.pending = _Deferred.pending, False
            if pending and exc_type is None:
                raise KeyboardInterrupt


def interruption_point() -> None:
    """Where a deferred Ctrl-C is raised: between batches, outside every queue and lock."""
    if _Deferred.pending:
        _Deferred.pending = False
        raise KeyboardInterrupt
