"""The probes before and after issue 16, side by side in one run, on the same problems and this machine.

The old implementation runs from a git worktree of commit OLD_REF (created under the system temp folder if
missing, never inside the project); the new one from this checkout's src/. For each problem, each side runs
in its own process the full `medprobe probe` path (its own dataset files, feature cache, freshness check,
5-fold splits, validation search, refit on train+val, test predictions, bootstrap, records), one classifier
at a time, and reports per classifier the search + refit seconds (the record's fit_seconds: the bootstrap is
the same code in both and is left out, see --bootstrap) and the validation-selected test balanced accuracy.
An old run still going after --old-timeout seconds is stopped; its time is then a lower bound (">").

Problems: the real one is scikit-learn's 1797 digit scans (10 classes, and even/odd as a binary task)
upscaled to 64x64 and embedded by efficientnet-lite0 (1280-d, its genuine ImageNet weights through
medprobe's registry, extracted once into --work); the others are Gaussian class centres plus unit noise,
binary and 10-class, 384 to 1536 dims, 500 to 20,000 samples.

    python benchmarks/probe_speed.py [--only digits10,n10000-d1024-k10] [--old-timeout 240] [--json out.json]
    python benchmarks/probe_speed.py --goals [--goal-10k]  # digits against plain logreg; 10k x 1024 x 10
    python benchmarks/probe_speed.py --profile-fold digits10   # where one fold's search time goes, one thread
    python benchmarks/probe_speed.py --primal-dual [--only ...] # the linear SVM by libsvm's dual and by the primal
    python benchmarks/probe_speed.py --kernel-timing            # the SVM's kernel matrices, whole against blocks
    python benchmarks/probe_speed.py --table out.json          # the table and summary of a saved run
    python benchmarks/probe_speed.py --old-ref 5f6fdfb --only n20000-d768-k10  # against another commit
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

OLD_REF = "9f64220"
ROOT = Path(__file__).resolve().parent.parent
CLASSIFIERS = ("logreg", "svm", "knn")
RUN_ORDER = ("logreg", "knn", "svm")  # the old SVM, the slow one, last: a timeout then stops only it
# (samples, dims, classes): class centres N(0, 1) x SEPARATION / sqrt(2 dims) apart by about SEPARATION noise
# standard deviations, so that test balanced accuracy stays well inside (chance, 1) at every width
SYNTHETIC = [(500, 384, 2), (500, 768, 10), (500, 1536, 2), (500, 1536, 10), (1000, 384, 10), (1000, 1024, 2),
             (1000, 1024, 10), (1000, 1536, 10), (2000, 384, 2), (2000, 768, 10), (2000, 1536, 2), (2000, 1536, 10),
             (5000, 384, 10), (5000, 768, 2), (5000, 1024, 10), (5000, 1536, 2), (10000, 384, 2), (10000, 1024, 10),
             (20000, 384, 2), (20000, 768, 10)]
SEPARATION = 2.5


def synthetic(n: int, dim: int, k: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng([seed, n, dim, k])
    y = np.arange(n) % k
    rng.shuffle(y)
    X = rng.normal(0, 1, (k, dim))[y] * SEPARATION / np.sqrt(2 * dim) + rng.normal(0, 1, (n, dim))
    return X.astype(np.float32), y


def digits_features(work: Path) -> tuple[np.ndarray, np.ndarray]:
    """efficientnet-lite0 features of the 1797 digits upscaled to 64x64 (extracted once, then reused)."""
    saved = work / "digits-efficientnet-lite0.npz"
    if not saved.exists():
        from PIL import Image
        from sklearn.datasets import load_digits

        from medprobe.cache import read_features
        from medprobe.data import load_dataset
        from medprobe.extract.runner import extract

        digits = load_digits()
        folder = work / "digits"
        (folder / "img").mkdir(parents=True, exist_ok=True)
        rows = []
        for i, (image, label) in enumerate(zip(digits.images, digits.target, strict=True)):
            pixels = (image / 16 * 255).astype(np.uint8)
            upscaled = Image.fromarray(pixels).resize((64, 64), Image.BILINEAR).convert("RGB")
            upscaled.save(folder / "img" / f"{i:04d}.png")
            rows.append({"path": f"img/{i:04d}.png", "label": f"digit{label}"})
        write_manifest(folder / "labels.csv", rows)
        dataset = load_dataset(folder / "labels.csv")
        report = extract(dataset=dataset, model="efficientnet-lite0", cache_dir=work / "cache", device="cpu",
                         precision="fp32", show_progress=False)
        X = read_features(report.path, dataset.ids, "gap")
        np.savez(saved, X=X, y=np.array([int(s.label[len("digit"):]) for s in dataset.samples]))
    data = np.load(saved)
    return data["X"], data["y"]


def problems(work: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    X, y = digits_features(work)
    found = {"digits10": (X, y), "digits-even-odd": (X, y % 2)}
    for n, dim, k in SYNTHETIC:
        found[f"n{n}-d{dim}-k{k}"] = synthetic(n, dim, k)
    return found


def write_manifest(path: Path, rows: list[dict]) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["path", "label"])
        writer.writeheader()
        writer.writerows(rows)


def child(features: Path, bootstrap: int, together: bool = False) -> None:
    """In a fresh process on one implementation (PYTHONPATH): a dataset of blank images with the problem's
    labels, a cache of its features, then one `probe` per classifier; one JSON line per classifier. With
    `together`: one `probe` of all three, as `medprobe probe --clf all` runs them, timed as one line."""
    from PIL import Image

    from medprobe.cache import CacheWriter, cache_path
    from medprobe.data import load_dataset
    from medprobe.data.signature import file_stat, fingerprint_bytes
    from medprobe.models.registry import resolve_model
    from medprobe.probe.runner import ProbeSettings, probe

    data = np.load(features)
    X, y = data["X"], data["y"]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "img").mkdir()
        Image.new("L", (2, 2)).save(root / "img" / "blank.png")
        blank = (root / "img" / "blank.png").read_bytes()
        for i in range(len(y)):
            (root / "img" / f"{i:06d}.png").write_bytes(blank)
        write_manifest(root / "labels.csv", [{"path": f"img/{i:06d}.png", "label": f"class{label}"}
                                             for i, label in enumerate(y)])
        dataset = load_dataset(root / "labels.csv")
        path = cache_path(root / "cache", dataset.cache_slug, resolve_model("resnet50").slug, "benchmark")
        fingerprint = fingerprint_bytes(blank)
        with CacheWriter(path, {"model_name": "resnet50", "pools": ["gap"], "weights_identity": "synthetic"}) as out:
            out.append_rows(dataset.ids)
            out.write(np.arange(len(y)), {"gap": X}, [fingerprint] * len(y),
                      [file_stat(sample.path) for sample in dataset.samples])
        if together:
            started = time.perf_counter()
            records = probe(dataset=dataset, models=None, cache_dir=root / "cache", out_dir=root / "out",
                            settings=ProbeSettings(classifiers=CLASSIFIERS, bootstrap=bootstrap), show_progress=False)
            print(json.dumps({"clf": "all", "total_seconds": round(time.perf_counter() - started, 2),
                              "fit_seconds": {r["method"]: r["timings"]["fit_seconds"] for r in records}}), flush=True)
            return
        for name in RUN_ORDER:
            started = time.perf_counter()
            record = probe(dataset=dataset, models=None, cache_dir=root / "cache", out_dir=root / "out",
                           settings=ProbeSettings(classifiers=(name,), bootstrap=bootstrap), show_progress=False)[0]
            print(json.dumps({"clf": name, "fit_seconds": record["timings"]["fit_seconds"],
                              "total_seconds": round(time.perf_counter() - started, 2),
                              "balanced_accuracy": record["metrics"]["balanced_accuracy"]["value"],
                              "chosen": [{k: v for k, v in h.items() if k not in ("fold", "val_balanced_accuracy")}
                                         for h in record["hyperparameters"]]}), flush=True)


def run_side(src: Path, features: Path, bootstrap: int, timeout: float | None,
             together: bool = False) -> tuple[dict, bool]:
    """Per classifier (or "all", `together`), the child's result; and whether it was stopped at the timeout."""
    env = {**os.environ, "PYTHONPATH": str(src), "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, __file__, "--child", str(features), str(bootstrap), *(["together"] if together else [])]
    with tempfile.TemporaryFile("w+") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.DEVNULL, env=env, cwd=src.parent,
                                   start_new_session=True)  # its own process group: its workers stop with it
        try:
            process.wait(timeout=timeout)
            stopped = False
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            stopped = True
        log.seek(0)
        results = {}
        for line in log.read().splitlines():
            if line.startswith("{"):
                row = json.loads(line)
                results[row.pop("clf")] = row
    if process.returncode and not stopped:
        raise RuntimeError(f"{src}: the child failed on {features}")
    return results, stopped


def old_checkout(ref: str) -> Path:
    tree = Path(tempfile.gettempdir()) / f"medprobe-old-{ref}"
    if not (tree / "src" / "medprobe").is_dir():
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(tree), ref], check=True,
                       capture_output=True)
    return tree / "src"


def compare(args) -> list[dict]:
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    old_src, new_src = old_checkout(args.old_ref), ROOT / "src"
    rows = []
    found = problems(work)
    for name in args.only.split(",") if args.only else found:
        X, y = found[name]
        features = work / f"{name}.npz"
        np.savez(features, X=X, y=y)
        started = time.perf_counter()
        old, stopped = run_side(old_src, features, args.bootstrap, args.old_timeout)
        old_wall = time.perf_counter() - started
        new, _ = run_side(new_src, features, args.bootstrap, None)
        row = {"problem": name, "n": len(y), "dim": X.shape[1], "classes": int(y.max() + 1)}
        for clf in CLASSIFIERS:
            if clf in old:
                row[clf] = {"old_s": old[clf]["fit_seconds"], "new_s": new[clf]["fit_seconds"],
                            "old_bacc": round(old[clf]["balanced_accuracy"], 4),
                            "new_bacc": round(new[clf]["balanced_accuracy"], 4),
                            "old_chosen": old[clf]["chosen"], "new_chosen": new[clf]["chosen"]}
            else:  # stopped in this classifier (it ran at least the rest of the wall time), or before it (None)
                done = sum(old[c]["total_seconds"] for c in old)
                lower = old_wall - done if clf == next(c for c in RUN_ORDER if c not in old) else None
                row[clf] = {"old_s": None, "old_at_least_s": lower and round(lower, 1),
                            "new_s": new[clf]["fit_seconds"],
                            "old_bacc": None, "new_bacc": round(new[clf]["balanced_accuracy"], 4),
                            "new_chosen": new[clf]["chosen"]}
        row["old_stopped"] = stopped
        rows.append(row)
        print(json.dumps({k: v for k, v in row.items()}), flush=True)
    print_table(rows)
    return rows


def svm_rbf_grid() -> list[float]:
    from medprobe.probe.svm import SVM_RBF_GRID  # this checkout's (the new side's)

    return list(SVM_RBF_GRID)


def cell(c: dict) -> str:
    """old / new seconds (ratio); a stopped old run gives a lower bound, one never started a dash."""
    if c["old_s"] is not None:
        return f"{c['old_s']:.1f} / {c['new_s']:.1f} ({c['old_s'] / c['new_s']:.1f}x)"
    if c.get("old_at_least_s"):
        return f"> {c['old_at_least_s']:.0f} / {c['new_s']:.1f} (> {c['old_at_least_s'] / c['new_s']:.1f}x)"
    return f"not run / {c['new_s']:.1f}"


def print_table(rows: list[dict]) -> None:
    print("| problem | n x d, classes | logreg old / new s (ratio) | svm | knn "
          "| test bal. acc. old -> new (logreg, svm, knn) |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        cells = [cell(row[clf]) for clf in CLASSIFIERS]
        accuracy = ", ".join(f"{row[c]['old_bacc'] if row[c]['old_bacc'] is not None else '—'} -> {row[c]['new_bacc']}"
                             for c in CLASSIFIERS)
        print(f"| {row['problem']} | {row['n']} x {row['dim']}, {row['classes']} | {' | '.join(cells)} | {accuracy} |")
    finished = [r for r in rows if all(r[c]["old_s"] is not None for c in CLASSIFIERS)]
    for clf in CLASSIFIERS:
        done = [r[clf] for r in rows if r[clf]["old_s"] is not None]
        print(f"{clf}: old/new over {len(done)} problems the old finished: "
              f"{sum(c['old_s'] for c in done) / sum(c['new_s'] for c in done):.1f}x")
    if finished:
        old = sum(r[c]["old_s"] for r in finished for c in CLASSIFIERS)
        new = sum(r[c]["new_s"] for r in finished for c in CLASSIFIERS)
        print(f"all three, {len(finished)} problems: {old:.0f} s -> {new:.0f} s ({old / new:.1f}x)")
    losses = [(r["problem"], c, r[c]["old_bacc"] - r[c]["new_bacc"]) for r in rows for c in CLASSIFIERS
              if r[c]["old_bacc"] is not None and r[c]["old_bacc"] - r[c]["new_bacc"] > 0.005]
    print("test balanced accuracy lost beyond 0.005:", losses or "none")
    choices = [(r["problem"], h) for r in rows for h in r["svm"]["new_chosen"]]
    rbf_problems = {problem for problem, h in choices if h["kernel"] == "rbf"}
    top_rbf = sum(h["kernel"] == "rbf" and h["C"] == max(svm_rbf_grid()) for _, h in choices)
    print(f"svm (new): RBF chosen in at least one fold on {len(rbf_problems)} of {len(rows)} problems; "
          f"RBF at its largest C in {top_rbf} of {len(choices)} fold selections")


def plain_logreg(X: np.ndarray, y: np.ndarray) -> dict:
    """One plain 5-fold scikit-learn logistic regression (standardised, defaults), with the default BLAS
    threads and with one; the faster is the yardstick."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from threadpoolctl import threadpool_limits

    seconds = {}
    for threads in (None, 1):
        with threadpool_limits(threads):
            started = time.perf_counter()
            cross_val_score(make_pipeline(StandardScaler(), LogisticRegression()), X, y, cv=5)
            seconds["default threads" if threads is None else "1 thread"] = round(time.perf_counter() - started, 2)
    return seconds


def goals(args) -> None:
    """Each goal problem twice, new side only: one `probe` per classifier (their seconds and the svm/logreg
    ratio), then one `probe` of all three as `medprobe probe --clf all` runs them (the goal's time: from the
    call to its records, after the child wrote the dataset and cache)."""
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    X, y = digits_features(work)
    cases = [("digits probe --clf all vs plain 5-fold logreg", "digits10", X, y)]
    if args.goal_10k:
        cases.append(("10k x 1024 x 10, all three, 5 folds, 5000 bootstrap", "goal-n10000-d1024-k10",
                      *synthetic(10000, 1024, 10)))
    for goal, name, X, y in cases:
        features = work / f"{name}.npz"
        np.savez(features, X=X, y=y)
        separate, _ = run_side(ROOT / "src", features, 5000, None)
        together, _ = run_side(ROOT / "src", features, 5000, None, together=True)
        row = {"goal": goal, "probe_all_s": together["all"]["total_seconds"],
               "probe_all_fit_s": together["all"]["fit_seconds"], "per_classifier": separate,
               "svm_over_logreg": round(separate["svm"]["total_seconds"] / separate["logreg"]["total_seconds"], 2)}
        if name == "digits10":
            row["plain_logreg_s"] = plain = plain_logreg(X, y)
            row["ratio"] = {threads: round(row["probe_all_s"] / s, 1) for threads, s in plain.items()}
        print(json.dumps(row), flush=True)


def one_fold(X: np.ndarray, y: np.ndarray):
    """64% train, 16% validation (seeded): the FoldData and the two index arrays."""
    from medprobe.probe.protocol import FoldData, fit_scaler

    order = np.random.default_rng(0).permutation(len(y))
    n_train, n_val = int(0.64 * len(y)), int(0.16 * len(y))
    train, val = np.sort(order[:n_train]), np.sort(order[n_train:n_train + n_val])
    return FoldData(X[train], y[train], X[val], y[val], int(y.max() + 1), fit_scaler(X[train])), train, val


def primal_dual(args) -> None:
    """One fold's linear-SVM grid two ways, one BLAS thread, on every problem up to the exact-kernel limit:
    libsvm's dual on the exact linear kernel (as the search runs it: kernel once, larger C's skipped once no
    multiplier is at its bound) and the squared-hinge primal by Newton (warm-started along C). Prints the
    seconds of each, libsvm's fits at its iteration cap, each one's best validation balanced accuracy, the
    training samples per feature, and the solver `svm.solver_for` picks. One JSON line per problem."""
    from threadpoolctl import threadpool_limits

    from medprobe.probe import svm
    from medprobe.probe.protocol import decision_scores, quiet_fit
    from medprobe.results.metrics import balanced_accuracy

    wanted = set(args.only.split(",")) if args.only else None
    for name, (X, y) in problems(args.work).items():
        data, train, _ = one_fold(X, y)
        if (wanted and name not in wanted) or len(train) > svm.KERNEL_LIMIT:
            continue
        Ztr, Zval = data.standardised()
        with threadpool_limits(1):
            started, previous, primal = time.perf_counter(), None, []
            for c in svm.SVM_LINEAR_GRID:
                previous = svm.linear_svm(c, Ztr, data.ytr, previous)
                primal.append(balanced_accuracy(data.yval, decision_scores(previous, Zval, data.n_classes)))
            primal_s = time.perf_counter() - started
            started, dual, at_cap = time.perf_counter(), [], 0
            grouped, y_grouped = svm.by_class(Ztr, data.ytr)
            train_kernel, val_kernel = svm.kernels(grouped, "linear", Zval)
            for c in svm.SVM_LINEAR_GRID:
                fitted = quiet_fit(svm.kernel_svc(c, "precomputed"), train_kernel, y_grouped)
                dual.append(balanced_accuracy(data.yval, decision_scores(fitted, val_kernel, data.n_classes)))
                at_cap += svm.capped(fitted)
                if not svm.at_bound(fitted, c):
                    break
            dual_s = time.perf_counter() - started
        print(json.dumps({"problem": name, "classes": data.n_classes,
                          "train_per_feature": round(len(train) / X.shape[1], 2), "primal_s": round(primal_s, 2),
                          "dual_s": round(dual_s, 2), "dual_fits_at_cap": at_cap,
                          "best_val_primal": round(max(primal), 4), "best_val_dual": round(max(dual), 4),
                          "chosen": svm.solver_for("linear", len(train), X.shape[1], data.n_classes)}), flush=True)


def profile_fold(args) -> None:
    """One fold of a problem (64% train, 16% validation, seeded), one BLAS thread: the seconds of every
    solver fit of the logreg and SVM searches (and L-BFGS iterations), the SVM's kernel matrices, and the
    refit of each search's choice on train+val. Printed as one JSON line per classifier."""
    from threadpoolctl import threadpool_limits

    from medprobe.probe import logreg, svm
    from medprobe.probe.classifiers import get_probe
    from medprobe.probe.protocol import best

    X, y = problems(args.work)[args.profile_fold]
    data, train, val = one_fold(X, y)
    n_train, n_val = len(train), len(val)
    for module, name, solvers in ((logreg, "logreg", ("quiet_fit",)), (svm, "svm", ("quiet_fit", "linear_svm"))):
        fits, plain = [], {solver: getattr(module, solver) for solver in solvers}

        def timed(*arguments, solver, fits=fits, plain=plain):
            started = time.perf_counter()
            fitted = plain[solver](*arguments)
            fits.append({"C": fitted.C, "s": round(time.perf_counter() - started, 3),
                         "iterations": int(np.max(fitted.n_iter_))})
            return fitted

        for solver in solvers:
            setattr(module, solver, lambda *arguments, solver=solver: timed(*arguments, solver=solver))
        row = {"problem": args.profile_fold, "train": n_train, "val": n_val, "clf": name}
        with threadpool_limits(1):
            if name == "svm":  # the exact kernel matrices its parts compute
                for kernel in [part[1] for part in get_probe(name).parts(n_train, X.shape[1], data.n_classes)
                               if part[0] == "kernel"]:
                    started = time.perf_counter()
                    svm.kernels(data.standardised()[0], kernel, data.standardised()[1])
                    row[f"{kernel}_kernel_s"] = round(time.perf_counter() - started, 3)
            probe, candidates = get_probe(name), []
            started = time.perf_counter()
            for part in probe.parts(n_train, X.shape[1], data.n_classes):
                candidates += probe.search(part, data, 0).candidates
            row["search_s"] = round(time.perf_counter() - started, 2)
            row["fits"] = list(fits)
            params, _ = best(candidates)
            train_val = np.sort(np.concatenate([train, val]))
            started = time.perf_counter()
            probe.fit(params, X[train_val], y[train_val], data.n_classes, 0)
            row["refit"] = {"params": params, "s": round(time.perf_counter() - started, 2)}
        for solver, function in plain.items():
            setattr(module, solver, function)
        print(json.dumps(row), flush=True)


def whole_matrix_kernel(Ztr: np.ndarray, kernel: str, Z: np.ndarray | None = None) -> np.ndarray:
    """The kernels before they were built block by block, as commit 1f3fef8 computed them: one whole float32
    product, the RBF taken from it in place, then one float64 copy (the row norms here from the rows, there
    from the product's diagonal: 8,000 x 1,024 more multiplications, a few ms)."""
    from medprobe.probe.svm import scale_gamma

    products = Ztr @ Ztr.T if Z is None else Z @ Ztr.T
    if kernel == "linear":
        return products.astype(np.float64)
    norms_tr = (Ztr * Ztr).sum(1)
    products *= -2
    products += (norms_tr if Z is None else (Z * Z).sum(1))[:, None]
    products += norms_tr[None, :]
    np.maximum(products, 0, out=products)
    products *= -np.float32(scale_gamma(Ztr))
    return np.exp(products, out=products).astype(np.float64)


KERNEL_WAYS = {("linear", "train"): ("whole", "blocks"), ("rbf", "train"): ("whole", "blocks"),
               ("rbf", "new rows"): ("whole", "blocks", "scikit-learn")}


def kernel_once(kernel: str, rows: str, way: str) -> None:
    """In a fresh process, as a search or refit task computes it: one kernel matrix at the exact-kernel limit
    (8,000 training rows x 1,024 features, or 2,000 new rows against them), one BLAS thread; prints its
    seconds and a checksum."""
    from sklearn.metrics.pairwise import rbf_kernel
    from threadpoolctl import threadpool_limits

    from medprobe.probe import svm

    rng = np.random.default_rng(0)
    Ztr = rng.normal(size=(svm.KERNEL_LIMIT, 1024)).astype(np.float32)
    Znew = rng.normal(size=(2000, 1024)).astype(np.float32) if rows == "new rows" else None
    compute = {"whole": lambda: whole_matrix_kernel(Ztr, kernel, Znew),
               "blocks": lambda: svm.kernels(Ztr, kernel)[0] if Znew is None else svm.kernel_against(Znew, Ztr, kernel),
               "scikit-learn": lambda: rbf_kernel(Znew, Ztr, gamma=svm.scale_gamma(Ztr))}[way]
    with threadpool_limits(1):
        started = time.perf_counter()
        matrix = compute()
        seconds = time.perf_counter() - started
    print(json.dumps({"seconds": seconds, "checksum": float(matrix[::97, ::89].sum())}))


def kernel_timing(args) -> None:
    """Each way of each kernel matrix in 5 fresh processes, the ways interleaved; the median seconds, the
    whole-matrix way's over the block-by-block one's, and whether their checksums agree to 1e-4."""
    for (kernel, rows), ways in KERNEL_WAYS.items():
        runs = {way: [] for way in ways}
        for _ in range(5):
            for way in ways:
                command = [sys.executable, __file__, "--kernel-child", kernel, rows, way]
                runs[way].append(json.loads(subprocess.run(command, check=True, capture_output=True, text=True,
                                                           env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
                                                           ).stdout.splitlines()[-1]))
        seconds = {way: round(float(np.median([run["seconds"] for run in found])), 3) for way, found in runs.items()}
        checksums = [found[0]["checksum"] for found in runs.values()]
        print(json.dumps({"kernel": kernel, "rows": rows, "median_seconds": seconds,
                          "whole_over_blocks": round(seconds["whole"] / seconds["blocks"], 2),
                          "checksums_agree": bool(np.allclose(checksums, checksums[0], rtol=1e-4))}), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", help="comma-separated problem names (default: all)")
    parser.add_argument("--old-timeout", type=float, default=240, help="seconds before an old run is stopped")
    parser.add_argument("--old-ref", default=OLD_REF, help=f"the commit of the old side (default {OLD_REF}, the "
                        "commit before issue 16)")
    parser.add_argument("--bootstrap", type=int, default=200, help="resamples (not timed: fit_seconds excludes it)")
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "medprobe-probe-speed")
    parser.add_argument("--goals", action="store_true", help="the digits goal (plain logreg yardstick), new only")
    parser.add_argument("--goal-10k", action="store_true", help="with --goals: also 10k x 1024 x 10, 5000 bootstrap")
    parser.add_argument("--profile-fold", metavar="PROBLEM", help="time one fold's search fits (one thread)")
    parser.add_argument("--primal-dual", action="store_true", help="the linear SVM grid by libsvm's dual and by "
                        "the squared-hinge primal, one fold per problem up to the kernel limit (one thread)")
    parser.add_argument("--kernel-timing", action="store_true", help="the SVM's kernel matrices at 8,000 x 1,024, "
                        "whole-matrix against block by block (one thread)")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--table", type=Path, metavar="JSON", help="print the table and summary of a --json file")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    parser.add_argument("--kernel-child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(Path(args.child[0]), int(args.child[1]), together=args.child[2:] == ["together"])
    elif args.goals:
        goals(args)
    elif args.profile_fold:
        profile_fold(args)
    elif args.primal_dual:
        primal_dual(args)
    elif args.kernel_child:
        kernel_once(*args.kernel_child)
    elif args.kernel_timing:
        kernel_timing(args)
    elif args.table:
        print_table(json.loads(args.table.read_text()))
    else:
        rows = compare(args)
        if args.json:
            args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
