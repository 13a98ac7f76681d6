"""The `medprobe` command. Ctrl-C while the command is still starting (importing its libraries) ends quietly
with exit code 130 too; once it runs, the CLI turns Ctrl-C into one line naming what was kept."""

import sys


def main() -> None:
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
