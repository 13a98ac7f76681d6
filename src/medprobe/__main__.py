"""The `medprobe` command. Ctrl-C while the command is still starting (importing its libraries) ends quietly
with exit code 130 too; once it runs, the CLI turns Ctrl-C into one line naming what was kept."""

import signal
import sys

RETRY_S = 0.005  # how soon a Ctrl-C that met importlib's own code is delivered again


def interrupt(signum, frame) -> None:
    """Ctrl-C in the main process: KeyboardInterrupt, except while importlib's own code runs. There CPython 3.11
    can lose the global import lock: a KeyboardInterrupt in the weakref callback of _get_module_lock, between
    its acquire_lock() and the try that releases it, leaves the lock held and the next import waits forever
    (seen once in a `.ci/run`: "Exception ignored in: ..._get_module_lock.<locals>.cb", then a hang). There
    the signal is sent again RETRY_S later, to whatever handles SIGINT by then."""
    if frame is not None and frame.f_code.co_filename.startswith("<frozen importlib"):
        signal.setitimer(signal.ITIMER_REAL, RETRY_S)
        return
    raise KeyboardInterrupt


def _interrupt_again(signum, frame) -> None:
    signal.raise_signal(signal.SIGINT)


def main() -> None:
    if hasattr(signal, "setitimer"):  # POSIX; elsewhere Python's own Ctrl-C handling stays
        signal.signal(signal.SIGALRM, _interrupt_again)
        signal.signal(signal.SIGINT, interrupt)
    try:
        _run()
    finally:
        # CPython 3.11 marks a KeyboardInterrupt that left an exec() or eval() of a string (dataclasses and other
        # libraries run such code while importing) as unhandled even after it was caught, and `python -m
        # medprobe` then ended by SIGINT (status -2) instead of exit code 130 (2 of 20 Ctrl-Cs during start-up,
        # tests/test_interruptions.py). Any exec() of a string that completes clears the mark.
        exec("")  # noqa: S102 - a constant empty program, run only for that side effect


def _run() -> None:
    try:
        from medprobe.cli import main as run_cli
    except KeyboardInterrupt:
        sys.exit(130)
    try:
        run_cli()
    except KeyboardInterrupt:  # in the instant between the command's end and ignoring Ctrl-C (cli.main)
        sys.exit(130)


if __name__ == "__main__":
    main()
