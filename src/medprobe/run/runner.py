"""`medprobe run`: the steps of an experiment, what is already done, and running the rest.

Steps run in order: every extraction (dataset x backbone, once), then every probe (x pool x seed, all
classifiers in one step) and fine-tune (x mode x seed), then one report. A probe or fine-tune step is done
when `<out>/run-state.json` lists it (under a key that hashes everything that shapes its result) and its
records exist; an extraction is done when its cache is complete and fresh. So a rerun after any
interruption skips finished steps, an interrupted extraction resumes from its journal and an interrupted
fine-tune from its last checkpoint. A step that fails (say, a backbone that cannot be downloaded) is
reported and the independent steps go on; the run then ends with exit code 2.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from medprobe.data import load_dataset
from medprobe.data.samples import Dataset
from medprobe.errors import Interrupted, MedprobeError
from medprobe.extract.settings import ExtractSettings
from medprobe.results.record import _atomic_write, safe_name
from medprobe.run.experiment import DatasetEntry, Experiment
from medprobe.timestamps import now_iso

STATE_FILE = "run-state.json"
EXTERNAL_COHORT = "external cohort"  # the variant of the extraction step of a dataset's `test` cohort


@dataclass
class Step:
    kind: str  # extract | probe | finetune
    dataset: DatasetEntry
    backbone: str
    variant: str = ""  # the pool of a probe, the mode of a fine-tune
    seed: int | None = None
    status: str = ""
    records: list[str] = field(default_factory=list)

    def label(self, names: dict[DatasetEntry, str]) -> str:
        seed = f" seed {self.seed}" if self.seed is not None else ""
        if self.variant == EXTERNAL_COHORT:  # extract chest's external cohort (site2.toml) x resnet50
            return f"{self.kind} {names[self.dataset]}'s {EXTERNAL_COHORT} ({self.dataset.test.name}) x {self.backbone}"
        extra = f" {self.variant}" if self.variant else ""
        return f"{self.kind} {names[self.dataset]} x {self.backbone}{extra}{seed}"

    def key(self, experiment: Experiment) -> str:
        """Everything that shapes the step's records: change any of it and the step runs again."""
        settings = {"kind": self.kind, "data": str(self.dataset.data.resolve()), "backbone": self.backbone,
                    "variant": self.variant, "seed": self.seed, "ordinal": self.dataset.ordinal,
                    "classes": list(self.dataset.classes), "folds": experiment.folds,
                    "bootstrap": experiment.bootstrap, "extract": experiment.extract}
        if self.kind == "probe":
            settings.update(classifiers=experiment.classifiers, shots=experiment.shots, repeats=experiment.repeats)
            if experiment.calibrate:  # only when set: keys of runs without it stay as they were
                settings["calibrate"] = experiment.calibrate
        if self.kind == "finetune":
            settings.update(finetune=experiment.finetune)
        if self.kind != "extract" and (self.dataset.test or self.dataset.subgroups):  # only when set, as above
            settings.update(test=str(self.dataset.test), subgroups=list(self.dataset.subgroups),
                            subgroup_min=self.dataset.subgroup_min)
        text = json.dumps(settings, sort_keys=True, default=str)
        return hashlib.blake2b(text.encode(), digest_size=8).hexdigest()


@dataclass
class RunSummary:
    steps: list[Step]
    names: dict[DatasetEntry, str]
    report_html: Path | None = None
    report_tables: list = field(default_factory=list)
    report_leaderboard: object = None  # report.tables.Table: backbone x dataset
    report_sections: list = field(default_factory=list)  # report.cohorts.TextTable: external, findings, ...

    def count(self, status: str) -> int:
        return sum(step.status == status for step in self.steps)


def plan_steps(experiment: Experiment) -> list[Step]:
    steps = [Step("extract", entry, backbone) for entry in experiment.datasets for backbone in experiment.backbones]
    steps += [Step("extract", entry, backbone, EXTERNAL_COHORT) for entry in experiment.datasets if entry.test
              for backbone in experiment.backbones]
    for entry in experiment.datasets:
        for backbone in experiment.backbones:
            steps += [Step("probe", entry, backbone, pool, seed) for pool in experiment.pools
                      for seed in experiment.seeds]
            if entry.finetune:
                steps += [Step("finetune", entry, backbone, mode, seed) for mode in experiment.finetune_modes
                          for seed in experiment.seeds]
    return steps


class Runner:
    def __init__(self, experiment: Experiment, console, *, verbose: bool = False) -> None:
        self.experiment = experiment
        self.verbose = verbose  # a progress bar and a line per fine-tune epoch; else one bar per fine-tune
        self.console = console
        self.records_dir = experiment.out / "records"
        self.state_path = experiment.out / STATE_FILE
        self.state = self._read_state()
        self.datasets: dict[DatasetEntry, Dataset] = {}
        self.tests: dict[DatasetEntry, Dataset] = {}  # the external cohorts of entries with a `test`
        for entry in experiment.datasets:
            dataset = load_dataset(entry.data)
            self.datasets[entry] = dataset.with_class_order(list(entry.classes)) if entry.classes else dataset
            if entry.test:
                self.tests[entry] = load_dataset(entry.test)
        self.names = {entry: dataset.name for entry, dataset in self.datasets.items()}
        if len(set(self.names.values())) < len(self.names):
            raise MedprobeError(f"{experiment.path}: two datasets share the name {sorted(self.names.values())}; "
                                "give each a dataset .toml with its own name = ...")

    def _read_state(self) -> dict:
        if not self.state_path.is_file():
            return {"steps": {}}
        try:
            return json.loads(self.state_path.read_text())
        except ValueError as exc:  # written atomically, so only a hand edit gets here
            raise MedprobeError(f"{self.state_path} is not valid JSON ({exc}); delete it to rerun every step") from exc

    def _save_state(self) -> None:
        _atomic_write(self.state_path, lambda handle: json.dump(self.state, handle, indent=1, sort_keys=True))

    @property
    def cache_dir(self) -> Path:
        from medprobe.locations import default_cache_dir

        return self.experiment.cache_dir or default_cache_dir()

    @property
    def extract_settings(self) -> ExtractSettings:
        return ExtractSettings(**self.experiment.extract)

    def status(self, step: Step) -> str:
        """done | to do | partial (...) | unavailable (...), without loading any weights."""
        if step.kind == "extract":
            return self._extract_status(step)
        entry = self.state["steps"].get(step.key(self.experiment))
        if entry and all(Path(p).is_file() for p in entry["records"]):
            step.records = entry["records"]
            return "done"
        if step.kind == "finetune":
            from medprobe.models.registry import resolve_model

            checkpoints = self.records_dir / safe_name(self.names[step.dataset]) / "checkpoints"
            slug = resolve_model(step.backbone).slug
            if any(checkpoints.glob(f"{slug}__finetune-{step.variant}__*seed{step.seed}/last.safetensors")):
                return "partial (resumes from its last checkpoint)"
        return "to do"

    def _extract_status(self, step: Step) -> str:
        from medprobe.cache import plan_rows, read_contents
        from medprobe.cache.journal import Journal
        from medprobe.extract.runner import locate_caches

        dataset = self._images_of(step)
        try:
            target = locate_caches(dataset, [step.backbone], self.cache_dir, self.extract_settings)[0]
        except MedprobeError as exc:
            return f"unavailable ({exc})"
        contents = read_contents(target.path) if target.path.exists() else None
        journaled = Journal(target.path).rows()  # batches a killed extraction left
        plan = plan_rows(contents, dataset.samples, dataset.root)
        total = len(dataset.samples)
        if plan.up_to_date and not journaled:
            return "done"
        cached = total - len(plan.todo) + journaled
        return f"partial ({cached}/{total} cached)" if cached else "to do"

    def _images_of(self, step: Step) -> Dataset:
        """The dataset a step reads: its entry's, or for the extraction of an external cohort, the cohort."""
        return self.tests[step.dataset] if step.variant == EXTERNAL_COHORT else self.datasets[step.dataset]

    def run(self, *, dry_run: bool = False, show_progress: bool = True) -> RunSummary:
        steps = plan_steps(self.experiment)
        for step in steps:
            step.status = self.status(step)
        summary = RunSummary(steps, self.names)
        if dry_run:
            return summary
        failed_extractions: set[tuple] = set()
        try:
            for entry in self.experiment.datasets:  # one decode of each image for all its backbones
                for variant in ("", EXTERNAL_COHORT):
                    group = [s for s in steps if s.kind == "extract" and s.dataset == entry and s.variant == variant
                             and s.status != "done"]
                    if len(group) > 1:
                        self._extract_together(group, show_progress)
            for step in steps:
                if step.status in ("done", "ran"):
                    continue
                if step.kind != "extract" and (step.dataset, step.backbone) in failed_extractions:
                    step.status = "blocked (its extraction failed)"
                    continue
                started = time.perf_counter()
                try:
                    self._execute(step, show_progress)
                except Interrupted:
                    raise
                except MedprobeError as exc:
                    step.status = f"failed: {exc}"
                    self.console.print(f"[red]failed:[/] {step.label(self.names)}: {exc}")
                    if step.kind == "extract":
                        failed_extractions.add((step.dataset, step.backbone))
                    continue
                step.status = "ran"
                self.console.print(f"done: {step.label(self.names)} ({time.perf_counter() - started:.1f}s)")
        except (KeyboardInterrupt, Interrupted):
            done = sum(s.status in ("done", "ran") for s in steps)
            raise Interrupted(f"{done} of {len(steps)} steps are finished and saved; run the same command again "
                              "to resume (finished steps are skipped)") from None
        if any(s.records or s.status == "ran" for s in steps if s.kind != "extract"):
            self._report(summary)
        return summary

    def _extract_together(self, group: list[Step], show_progress: bool) -> None:
        """Extract a dataset's backbones in one pass; when it fails, the steps run one by one afterwards, so
        the failing backbone is named and the others still extract."""
        from medprobe.extract.runner import extract_models

        started = time.perf_counter()
        try:
            extract_models(self._images_of(group[0]), [s.backbone for s in group], self.cache_dir,
                           self.extract_settings, show_progress=show_progress)
        except Interrupted:
            raise
        except MedprobeError:
            return
        for step in group:
            step.status = "ran"
            self.console.print(f"done: {step.label(self.names)} ({time.perf_counter() - started:.1f}s, "
                               f"{len(group)} backbones in one pass)")

    def _execute(self, step: Step, show_progress: bool) -> None:
        dataset = self.datasets[step.dataset]
        entry = step.dataset
        if step.kind == "extract":
            from medprobe.extract.runner import extract_models

            extract_models(self._images_of(step), [step.backbone], self.cache_dir, self.extract_settings,
                           show_progress=show_progress)
            return
        if step.kind == "probe":
            from medprobe.probe.runner import ProbeSettings, probe

            shots = tuple(self.experiment.shots)
            settings = ProbeSettings(classifiers=tuple(self.experiment.classifiers), pool=step.variant,
                                     folds=self.experiment.folds, seed=step.seed, bootstrap=self.experiment.bootstrap,
                                     ordinal=step.dataset.ordinal, shots=shots, repeats=self.experiment.repeats,
                                     calibrate=self.experiment.calibrate, subgroups=entry.subgroups,
                                     subgroup_min=entry.subgroup_min)
            records = probe(dataset=dataset, models=[step.backbone], cache_dir=self.cache_dir,
                            out_dir=self.records_dir, settings=settings, tested=self.tests.get(entry),
                            show_progress=show_progress)
        else:
            from medprobe.finetune.runner import finetune
            from medprobe.finetune.settings import FinetuneSettings

            settings = FinetuneSettings(**{**self.experiment.finetune, "unfreeze": step.variant, "seed": step.seed,
                                           "folds": self.experiment.folds, "bootstrap": self.experiment.bootstrap,
                                           "ordinal": step.dataset.ordinal, "resume": True,
                                           "subgroups": entry.subgroups, "subgroup_min": entry.subgroup_min})
            records = finetune(dataset=dataset, model=step.backbone, settings=settings, out_dir=self.records_dir,
                               show_progress=show_progress, verbose=self.verbose, tested=self.tests.get(entry))
        step.records = [r["record_path"] for r in records]
        self.state["steps"][step.key(self.experiment)] = {"label": step.label(self.names), "records": step.records,
                                                          "finished_at": now_iso()}
        self._save_state()

    def _report(self, summary: RunSummary) -> None:
        from medprobe.report import build_report

        report = build_report(results_dirs=[self.records_dir], out_dir=self.experiment.out / "report",
                              metric=self.experiment.metric)
        summary.report_html = report.html
        summary.report_tables = report.tables
        summary.report_leaderboard = report.leaderboard
        summary.report_sections = report.content.sections
