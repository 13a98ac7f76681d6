"""Where the probes' joblib tasks run (`medprobe probe --backend`): local worker processes, or an existing
Dask or Ray cluster. The tasks are the same everywhere (each fold's hyperparameter-search parts, then each
fold's final fit), so the results do not depend on the backend."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from joblib import parallel_config

from medprobe.errors import MedprobeError

BACKENDS = ("local", "dask", "ray")
CONNECT_TIMEOUT_S = 30


@contextlib.contextmanager
def compute_backend(name: str, scheduler: str | None = None) -> Iterator[str]:
    """Within the block, joblib.Parallel runs on the chosen backend; yields a description for records."""
    if name not in BACKENDS:
        raise MedprobeError(f"--backend {name!r} is not one of {', '.join(BACKENDS)}")
    if name == "local":
        if scheduler:
            raise MedprobeError(f"--scheduler {scheduler} needs --backend dask or ray; drop it to run locally")
        yield "local"
    elif name == "dask":
        with _dask(scheduler) as description:
            yield description
    else:
        with _ray(scheduler) as description:
            yield description


@contextlib.contextmanager
def _dask(scheduler: str | None) -> Iterator[str]:
    if not scheduler:
        raise MedprobeError("--backend dask needs --scheduler ADDRESS of a running Dask scheduler "
                            "(e.g. tcp://10.0.0.5:8786, from `dask scheduler`)")
    try:
        from distributed import Client
    except ImportError as exc:
        raise MedprobeError("--backend dask needs dask.distributed: pip install 'medprobe[dask]'") from exc
    try:
        client = Client(scheduler, timeout=CONNECT_TIMEOUT_S, set_as_default=False)
    except (OSError, TimeoutError) as exc:
        raise MedprobeError(f"--scheduler {scheduler}: no Dask scheduler answered ({exc.__class__.__name__}); "
                            "start one with `dask scheduler` and workers with `dask worker ADDRESS`, or fix the "
                            "address") from exc
    try:
        with parallel_config(backend="dask", client=client):
            yield f"dask {scheduler}"
    finally:
        client.close()


@contextlib.contextmanager
def _ray(scheduler: str | None) -> Iterator[str]:
    try:
        import ray
        from ray.util.joblib import register_ray
    except ImportError as exc:
        raise MedprobeError("--backend ray needs ray: pip install 'medprobe[ray]'") from exc
    connected_here = not ray.is_initialized()
    if connected_here:
        try:  # no address: $RAY_ADDRESS, or a Ray instance started for this run
            ray.init(address=scheduler, log_to_driver=False, include_dashboard=False)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise MedprobeError(f"--scheduler {scheduler}: cannot connect to Ray ({exc}); start a cluster with "
                                "`ray start --head` or fix the address (e.g. ray://host:10001)") from exc
    register_ray()
    try:
        with parallel_config(backend="ray"):
            yield f"ray {scheduler or 'local'}"
    finally:
        if connected_here:
            ray.shutdown()
