"""DataLoader workers stop quietly on Ctrl-C by construction: tensors sent by value (no socket-serving
thread to die mid-handshake, no shared segment), and background-thread errors of a dying process off the
terminal unless --debug."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
import torch
from fast_loader import stop_fast_loaders
from torch.utils.data import DataLoader, IterableDataset

from medprobe.runtime.workers import DEBUG_VARIABLE, start_worker


class Batches(IterableDataset):
    def __iter__(self):
        yield torch.arange(6, dtype=torch.float32).reshape(2, 3)
        yield torch.tensor([1.5, -2.0], dtype=torch.bfloat16)
        yield torch.zeros((), dtype=torch.int64)


def test_workers_send_tensors_by_value_not_through_shared_memory():
    loader = DataLoader(Batches(), batch_size=None, num_workers=1, worker_init_fn=start_worker)
    received = list(loader)
    assert [t.dtype for t in received] == [torch.float32, torch.bfloat16, torch.int64]
    assert torch.equal(received[0], torch.arange(6, dtype=torch.float32).reshape(2, 3))
    assert received[1].tolist() == [1.5, -2.0] and received[2].shape == ()
    assert not any(t.is_shared() for t in received)  # torch's own reducers would hand over shared memory
    plain = list(DataLoader(Batches(), batch_size=None, num_workers=1))
    assert all(t.is_shared() for t in plain)


def test_ctrl_c_while_batches_cross_from_workers_prints_no_traceback():
    # with torch's default fd passing about half of such stops printed a ConnectionResetError traceback
    # (benchmarks/ctrl_c_tracebacks.py measures both ways)
    for code, err in stop_fast_loaders("medprobe.runtime.workers:start_worker", stops=10, forked=True):
        assert code == 130 and err == "interrupted: one line\n", err


BACKGROUND_ERRORS = r"""
import sys, threading
from medprobe.runtime.workers import SHUTDOWN_ERRORS, quiet_background_errors

quiet_background_errors(only=SHUTDOWN_ERRORS)

def raise_(error):
    raise error

def report_like_multiprocessing(error):  # multiprocessing's resource sharer reports through sys.excepthook
    try:
        raise error
    except BaseException:
        sys.excepthook(*sys.exc_info())

for target, error in [(raise_, ConnectionResetError("peer gone")), (report_like_multiprocessing, EOFError("eof")),
                      (raise_, ValueError("a real bug"))]:
    thread = threading.Thread(target=target, args=(error,))
    thread.start()
    thread.join()
"""


def test_background_thread_errors_are_quiet_unless_debug_but_real_bugs_still_show():
    env = {k: v for k, v in os.environ.items() if k != DEBUG_VARIABLE}
    quiet = subprocess.run([sys.executable, "-c", BACKGROUND_ERRORS], env=env, capture_output=True, text=True)
    assert "peer gone" not in quiet.stderr and "eof" not in quiet.stderr
    assert "ValueError: a real bug" in quiet.stderr
    debug = subprocess.run([sys.executable, "-c", BACKGROUND_ERRORS], env={**env, DEBUG_VARIABLE: "1"},
                           capture_output=True, text=True)
    assert "ConnectionResetError: peer gone" in debug.stderr and "EOFError: eof" in debug.stderr
    assert "ValueError: a real bug" in debug.stderr


def test_a_deferred_ctrl_c_is_raised_between_batches_and_the_handler_is_restored():
    import os
    import signal

    from medprobe.runtime.workers import deferred_interrupts, interruption_point

    before = signal.getsignal(signal.SIGINT)
    reached = []
    with pytest.raises(KeyboardInterrupt):
        with deferred_interrupts():
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)
            reached.append("after the signal")  # the signal did not stop the code mid-step
            interruption_point()
            reached.append("after the point")
    assert reached == ["after the signal"] and signal.getsignal(signal.SIGINT) is before
    with pytest.raises(KeyboardInterrupt):  # pending when the block ends: raised on leaving it
        with deferred_interrupts():
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)
    with deferred_interrupts():
        interruption_point()  # nothing pending: no effect
    assert signal.getsignal(signal.SIGINT) is before


@pytest.mark.parametrize(("cores", "workers"), [(1, 1), (2, 1), (16, 8), (64, 8), (None, 1)])
def test_default_loader_workers_leave_one_core_and_stop_at_eight(cores, workers, monkeypatch):
    from medprobe.runtime.workers import default_workers

    monkeypatch.setattr(os, "cpu_count", lambda: cores)
    assert default_workers() == workers


@pytest.mark.parametrize(("device", "bf16_hardware", "expected"), [
    ("cuda", True, "bf16"), ("cuda", False, "fp16"), ("cpu", True, "bf16"), ("cpu", False, "fp32")])
def test_precision_auto_is_bf16_where_the_hardware_runs_it_else_fp16_on_gpus_and_fp32_on_cpus(
        device, bf16_hardware, expected, monkeypatch):
    """README: --precision auto is bf16 on GPUs that support it (else fp16) and on CPUs with AVX512-BF16/AMX
    (oneDNN's own bf16 check), else fp32; an explicit precision is kept whatever the hardware."""
    from medprobe.errors import MedprobeError
    from medprobe.runtime import device as device_module

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16_hardware)
    monkeypatch.setattr(device_module, "cpu_supports_bf16", lambda: bf16_hardware)
    assert device_module.resolve_precision("auto", torch.device(device)) == expected
    for explicit in ("fp32", "bf16", "fp16"):
        assert device_module.resolve_precision(explicit, torch.device(device)) == explicit
    with pytest.raises(MedprobeError, match="--precision 'half' is not one of auto, fp32, bf16, fp16"):
        device_module.resolve_precision("half", torch.device(device))


def test_cpu_bf16_support_is_onednns_own_answer(monkeypatch):
    from medprobe.runtime.device import cpu_supports_bf16

    for answer in (True, False):
        monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda answer=answer: answer)
        assert cpu_supports_bf16() is answer
