"""The one error type a user can cause. The CLI prints its message as one line and exits with code 2."""


class MedprobeError(Exception):
    """A problem with the user's input: the message names the file or value and the fix."""


class Interrupted(MedprobeError):
    """Ctrl-C: the work so far is saved; the message says how to resume. Exit code 130, as for SIGINT."""

    exit_code = 130


class InvalidData(MedprobeError, ValueError):
    """Arrays given to a medprobe estimator (medprobe.probes) that it cannot fit: also a ValueError, as
    scikit-learn's tools expect of an estimator."""
