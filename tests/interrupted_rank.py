"""Run by torchrun from tests/test_scale.py: a two-process extraction in which rank 1 is killed (SIGKILL, no
clean-up) right after its second batch is written, as a crashed node or an OOM kill would leave it. Just
before, it tries a plain extraction into the same cache, which rank 0's lock must refuse.

    torchrun --nproc-per-node 2 tests/interrupted_rank.py DATA MODEL CACHE_DIR
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

from medprobe.data import load_dataset
from medprobe.extract import distributed
from medprobe.extract.settings import ExtractSettings


def die_after_two_batches(*args, **kwargs):
    backbone = original_load(*args, **kwargs)
    embed, calls = backbone.embed, []

    def embed_then_die(pixels):
        calls.append(1)
        if len(calls) > 2:  # the two batches before were written to the journal
            try_a_second_writer()
            os.kill(os.getpid(), signal.SIGKILL)
        return embed(pixels)

    backbone.embed = embed_then_die
    return backbone


def try_a_second_writer() -> None:
    """While rank 0 holds the cache's lock, a plain extraction from another process (this rank) is refused;
    what it was told goes to CACHE_DIR/../second-writer.txt for the test to read."""
    from medprobe.errors import MedprobeError
    from medprobe.extract.runner import extract

    try:
        extract(dataset=load_dataset(Path(data)), model=model, cache_dir=Path(cache_dir), device="cpu",
                precision="fp32", workers=0, show_progress=False)
        told = "not refused"
    except MedprobeError as exc:
        told = str(exc)
    (Path(cache_dir).parent / "second-writer.txt").write_text(told)


if __name__ == "__main__":
    data, model, cache_dir = sys.argv[1:4]
    original_load = distributed.load_backbone
    if os.environ["RANK"] == "1":
        distributed.load_backbone = die_after_two_batches
    distributed.extract_sharded(load_dataset(Path(data)), [model], Path(cache_dir),
                                ExtractSettings(device="cpu", precision="fp32", batch_size=4, workers=0),
                                show_progress=False)
