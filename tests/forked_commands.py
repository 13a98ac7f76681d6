"""`medprobe COMMAND` as a fork of one process that has already imported medprobe and what its commands
import (torch, torchvision, timm, transformers). The stop harnesses start dozens of commands; a fresh
`python -m medprobe` spends most of its first seconds importing (torchvision alone pulls in torch._dynamo),
which no stop needs to repeat. A fork runs the real command from `medprobe.__main__.main` in a new session
(its own process group, the loader workers in it) and ends through the interpreter's own exit, so signals,
exit codes and shutdown are those of the command; only the import phase is left out, and Ctrl-C landing
there is tested with fresh processes (test_interruptions.py).

Run as a script, this module is the forking server: one JSON request per line on stdin
({"argv": [...], "out": path, "err": path}, or "code" instead of "argv": a Python program to run), answered
on stdout by {"pid": N} once the child leads its session, and {"exited": N, "returncode": R} when it ends
(R as subprocess reports it: -9 for SIGKILL)."""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import tempfile
import threading
import time
from itertools import count
from pathlib import Path

COMMAND_ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}  # every command's, by default
PRELOADED = ("medprobe.cli", "medprobe.extract.runner", "medprobe.finetune.runner", "medprobe.run.runner", "timm",
             "transformers")


def _serve() -> None:
    import importlib

    for module in PRELOADED:
        importlib.import_module(module)
    # native pools (OpenBLAS, jemalloc) have fork handlers, as for the DataLoader's own forks; a Python thread
    # would be lost in the child holding whatever it held
    assert threading.active_count() == 1, "the forking server must not run Python threads"
    os.write(1, b'{"ready": true}\n')
    pending = b""
    while True:
        readable, _, _ = select.select([0], [], [], 0.02)
        if readable:
            chunk = os.read(0, 65536)
            if not chunk:
                return
            pending += chunk
            while b"\n" in pending:
                line, pending = pending.split(b"\n", 1)
                _fork(json.loads(line))
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            os.write(1, json.dumps({"exited": pid, "returncode": os.waitstatus_to_exitcode(status)}).encode() + b"\n")


def _fork(request: dict) -> None:
    ready_read, ready_write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the command: its own session, its own files, the CLI's exit as the process's exit
        os.setsid()
        for fd, path, flags in ((0, os.devnull, os.O_RDONLY), (1, request["out"], os.O_WRONLY | os.O_CREAT),
                                (2, request["err"], os.O_WRONLY | os.O_CREAT)):
            opened = os.open(path, flags, 0o644)
            os.dup2(opened, fd)
            os.close(opened)
        os.write(ready_write, b"x")
        os.close(ready_write)
        os.close(ready_read)
        if "code" in request:  # a program of its own, as `python -c CODE` would run it
            sys.argv = ["-c"]
            exec(compile(request["code"], "<forked>", "exec"), {"__name__": "__main__"})  # noqa: S102 - the tests'
        else:
            sys.argv = ["medprobe", *request["argv"]]
            from medprobe.__main__ import main

            main()
        sys.exit(0)  # SystemExit leaves through the server's frames: the interpreter's exit, as in `python -m`
    os.close(ready_write)
    os.read(ready_read, 1)  # the child leads its process group: killpg may be sent from now on
    os.close(ready_read)
    os.write(1, json.dumps({"pid": pid}).encode() + b"\n")


class _Server:
    def __init__(self) -> None:
        self.process = subprocess.Popen([sys.executable, __file__], env=COMMAND_ENV, stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, bufsize=0, start_new_session=True)
        self.exits: dict[int, int] = {}
        self.pending = b""  # read but not yet parsed: select() sees only what is still in the pipe
        assert self._reply(timeout=120) == {"ready": True}

    def start(self, request: dict, out: Path, err: Path) -> int:
        self.process.stdin.write(json.dumps({**request, "out": str(out), "err": str(err)}).encode() + b"\n")
        self.process.stdin.flush()
        while True:
            reply = self._reply(timeout=120)
            if "pid" in reply:
                return reply["pid"]

    def _answered(self, timeout: float) -> bool:
        """Whether a whole reply line is at hand, reading from the pipe for up to `timeout` s. Lines are
        buffered here, not in a file object: two replies can arrive in one read (a command that ends as soon
        as it starts), and select() would not report the second one once a buffered reader held it."""
        deadline = time.monotonic() + timeout
        while b"\n" not in self.pending:  # a timeout of 0 still looks once (poll)
            if not select.select([self.process.stdout], [], [], max(deadline - time.monotonic(), 0))[0]:
                return False
            chunk = os.read(self.process.stdout.fileno(), 65536)
            if not chunk:
                raise RuntimeError(f"the forking server ended (exit {self.process.wait()})")
            self.pending += chunk
        return True

    def _reply(self, timeout: float) -> dict:
        if not self._answered(timeout):
            raise TimeoutError("the forking server did not answer")
        line, self.pending = self.pending.split(b"\n", 1)
        reply = json.loads(line)
        if "exited" in reply:
            self.exits[reply["exited"]] = reply["returncode"]
        return reply

    def returncode(self, pid: int, timeout: float = 0.0) -> int | None:
        deadline = time.monotonic() + timeout
        while pid not in self.exits:
            if not self._answered(max(deadline - time.monotonic(), 0)):
                return None
            self._reply(timeout=0)
        return self.exits[pid]


_server: _Server | None = None  # started by the first command, shared by every later one
_outputs, _numbers = Path(tempfile.mkdtemp(prefix="medprobe-forked-")), count()


class ForkedCommand:
    """What the stop harnesses use of subprocess.Popen: pid (which leads its process group), poll(),
    wait(), communicate() -> (stdout, stderr) and returncode."""

    def __init__(self, args, code: str | None = None) -> None:
        global _server
        if _server is None or _server.process.poll() is not None:
            _server = _Server()
        self.server, self.returncode = _server, None
        number = next(_numbers)
        self.out, self.err = _outputs / f"{number}.out", _outputs / f"{number}.err"
        request = {"code": code} if code is not None else {"argv": [str(a) for a in args]}
        self.pid = self.server.start(request, self.out, self.err)

    def poll(self) -> int | None:
        if self.returncode is None:
            self.returncode = self.server.returncode(self.pid)
        return self.returncode

    def signal_group(self, how: int) -> bool:
        """Sends `how` to the command's process group, if it is still running. False when it had already
        ended: the server reaps its children at once, so the group can go between poll() and the signal."""
        if self.poll() is not None:
            return False
        try:
            os.killpg(self.pid, how)
        except ProcessLookupError:
            return False
        return True

    def wait(self, timeout: float | None = None) -> int:
        if self.returncode is None:
            self.returncode = self.server.returncode(self.pid, timeout=1e9 if timeout is None else timeout)
        if self.returncode is None:
            raise subprocess.TimeoutExpired(f"medprobe (pid {self.pid})", timeout)
        return self.returncode

    def wait_for_output(self, text: str, timeout: float) -> bool:
        """Until stdout holds `text` (True), or the command ended or `timeout` passed (False)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.poll() is None:
            if text in self.out.read_text():
                return True
            time.sleep(0.01)
        return text in self.out.read_text()

    def communicate(self, timeout: float | None = None) -> tuple[str, str]:
        self.wait(timeout)
        return self.out.read_text(), self.err.read_text()


if __name__ == "__main__":
    _serve()
