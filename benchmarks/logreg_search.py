"""Coarse-to-fine C search for logreg against the full 45-value DINOv2 grid, side by side.

On random synthetic problems (sizes, widths, class counts and separations drawn per problem), each
search picks C on a validation split. Reported: how often coarse-to-fine reaches the full grid's best
validation score (with refinement around the best 2 peaks, as medprobe does, and around 1 peak only),
and the time ratio.

    python benchmarks/logreg_search.py [--problems 30]
"""

from __future__ import annotations

import argparse
import json
import time
from unittest import mock

import numpy as np

from medprobe.probe import classifiers


def problem(rng: np.random.Generator):
    n = int(rng.choice([200, 600, 2000]))
    dim = int(rng.choice([32, 384, 1024]))
    k = int(rng.choice([2, 3, 5]))
    separation = float(rng.choice([0.02, 0.05, 0.2]))
    y = rng.integers(0, k, n)
    X = (rng.normal(0, 1, (k, dim))[y] * separation + rng.normal(0, 1, (n, dim))).astype(np.float32)
    order = rng.permutation(n)
    train, val = order[: int(0.8 * n)], order[int(0.8 * n):]
    return X[train], y[train], X[val], y[val], k


def timed_search(args, **kwargs) -> tuple[float, float]:
    started = time.perf_counter()
    _, score = classifiers.search("logreg", *args, 0, **kwargs)
    return score, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--problems", type=int, default=30)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    two_peaks = classifiers._best_peaks

    def one_peak(values, positions, count):
        return two_peaks(values, positions, 1)

    same_two = same_one = 0
    full_time = two_time = 0.0
    for _ in range(args.problems):
        data = problem(rng)
        full, t_full = timed_search(data)
        two, t_two = timed_search(data, coarse_to_fine=True)
        with mock.patch.object(classifiers, "_best_peaks", one_peak):
            one, _ = timed_search(data, coarse_to_fine=True)
        same_two += two == full
        same_one += one == full
        full_time += t_full
        two_time += t_two
    print(json.dumps({
        "problems": args.problems,
        "same_optimum_two_peaks": f"{same_two}/{args.problems}",
        "same_optimum_one_peak": f"{same_one}/{args.problems}",
        "full_grid_over_coarse_to_fine_time": round(full_time / two_time, 2),
    }, indent=2))


if __name__ == "__main__":
    main()
