"""Run by torchrun from tests/test_scale.py: a two-process extraction in which rank 1 is killed (SIGKILL, no
clean-up) right after its second batch is written, as a crashed node or an OOM kill would leave it.

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
            os.kill(os.getpid(), signal.SIGKILL)
        return embed(pixels)

    backbone.embed = embed_then_die
    return backbone


if __name__ == "__main__":
    data, model, cache_dir = sys.argv[1:4]
    original_load = distributed.load_backbone
    if os.environ["RANK"] == "1":
        distributed.load_backbone = die_after_two_batches
    distributed.extract_sharded(load_dataset(Path(data)), [model], Path(cache_dir),
                                ExtractSettings(device="cpu", precision="fp32", batch_size=4, workers=0),
                                show_progress=False)
