"""Statistics of the report: repeated runs grouped per configuration, their spread over seeds,
bootstrap confidence intervals over the validation images and McNemar's paired test.

* A **group** is every finished run of one configuration on one dataset: the saved config.yaml
  files are equal except for ``run.seed``, ``run.name``, ``run.dir``, ``run.resume`` and ``wandb.*``
  (``train --seeds N`` makes such runs; so does ``train run.seed=...`` repeated by hand).
* **mean ± std** is over the group's runs (sample std, ddof 1) of the selected checkpoint's metric.
* The **95 % CI** is a percentile bootstrap over the validation images: each of
  :data:`BOOTSTRAP_RESAMPLES` resamples (seeded, so the report is deterministic) draws the
  validation images with replacement, scores every run of the group on the same drawn images and
  averages the runs (per run, then averaged; not pooled). It needs ``val_predictions.npz``.
* The **paired test** compares two groups on the same validation images (same count and the same
  targets in the same order) with McNemar's exact test: a two-sided binomial test (p = 1/2) on the
  images exactly one of the two gets right. A group is represented by its best run (highest
  validation macro-F1, the run the report ranks first).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from omegaconf import OmegaConf
from scipy.stats import binom

from research.config import Config, flatten
from research.report.collect import RunRecord

# Config keys that do not make two runs different configurations. data.num_workers changes how a run
# executes; it also changes its augmentation draws (each worker has its own stream), as a seed does.
IGNORED_KEYS = ("run.seed", "run.name", "run.dir", "run.resume", "data.num_workers")
IGNORED_PREFIXES = ("wandb.",)
BOOTSTRAP_RESAMPLES = 1000
BOOTSTRAP_SEED = 0
CONFIDENCE = 0.95
ALPHA = 0.05  # significance level of the paired test
CI_METRICS = ("acc", "macro_f1")
NO_PREDICTIONS = "predictions not saved"
OTHER_IMAGES = "the validation images differ"


def config_key(record: RunRecord) -> tuple[tuple[str, str], ...] | None:
    """The run's configuration without seed, name, folders and W&B settings, and without keys at their
    schema default (so a run recorded before a key existed groups with a new run that leaves it at the
    default); ``None`` without a config."""
    if not record.config:
        return None
    defaults = _schema_defaults()
    return tuple(
        sorted(
            (key, repr(value))
            for key, value in record.config.items()
            if key not in IGNORED_KEYS and not key.startswith(IGNORED_PREFIXES)
            and not (key in defaults and defaults[key] == value)
        )
    )


@functools.cache
def _schema_defaults() -> dict[str, Any]:
    return flatten(OmegaConf.structured(Config))


@dataclass
class RunGroup:
    """Finished runs of one configuration on one dataset, best validation macro-F1 first."""

    runs: list[RunRecord]
    label: str = ""
    _ci: dict[str, tuple[float, float] | None] = field(default_factory=dict, repr=False)

    @property
    def best_run(self) -> RunRecord:
        return self.runs[0]

    @property
    def model(self) -> str:
        return self.best_run.model

    @property
    def n(self) -> int:
        return len(self.runs)

    def values(self, metric: str) -> list[float]:
        return [float(v) for v in (r.score(metric) for r in self.runs) if v is not None]

    def mean(self, metric: str) -> float | None:
        values = self.values(metric)
        return float(np.mean(values)) if values else None

    def std(self, metric: str) -> float | None:
        """Sample standard deviation over the runs (ddof 1); ``None`` with fewer than two values."""
        values = self.values(metric)
        return float(np.std(values, ddof=1)) if len(values) > 1 else None

    def mean_of(self, attr: str) -> float | None:
        values = [float(v) for v in (getattr(r, attr) for r in self.runs) if v is not None]
        return float(np.mean(values)) if values else None

    def predictions(self) -> list[tuple[np.ndarray, np.ndarray]] | None:
        """``(targets, preds)`` of every run, or ``None`` unless all runs saved them for the same images."""
        saved = [r.val_predictions for r in self.runs]
        if any(p is None for p in saved):
            return None
        targets = saved[0]["targets"]
        if any(not np.array_equal(p["targets"], targets) for p in saved):
            return None
        return [(p["targets"], p["preds"]) for p in saved]

    def ci(self, metric: str) -> tuple[float, float] | None:
        """The bootstrap 95 % CI of the group's mean ``metric`` (``acc`` or ``macro_f1``), or ``None``."""
        if metric not in self._ci:
            predictions = self.predictions()
            self._ci[metric] = None if not predictions or not len(predictions[0][0]) else bootstrap_ci(predictions, metric)
        return self._ci[metric]


def group_runs(runs: Sequence[RunRecord]) -> list[RunGroup]:
    """``runs`` grouped per dataset and configuration, best mean validation macro-F1 first.

    A run without a saved config is a group of its own. Groups of several runs are labelled with
    their model, plus the config values that tell them apart from other groups of the same model.
    """
    keyed: dict[Any, list[RunRecord]] = {}
    for record in runs:
        key = config_key(record)
        keyed.setdefault((record.synthetic, record.dataset.name, key if key is not None else record.run_id), []).append(record)
    groups = [RunGroup(sorted(members, key=_run_order)) for members in keyed.values()]

    def order(group: RunGroup) -> tuple[float, str]:
        f1 = group.mean("macro_f1")
        return (-f1 if f1 is not None else float("inf"), group.best_run.run_id)

    groups.sort(key=order)
    _label(groups)
    return groups


def _run_order(record: RunRecord) -> tuple[float, str]:
    f1 = record.score("macro_f1")
    return (-float(f1) if f1 is not None else float("inf"), record.run_id)


def _label(groups: Sequence[RunGroup]) -> None:
    models: dict[str, list[RunGroup]] = {}
    for group in groups:
        models.setdefault(group.model, []).append(group)
    for group in groups:
        same = models[group.model]
        if len(same) == 1:  # the model names the row, whether it holds one run or several seeds
            group.label = group.model
            continue
        if not group.best_run.config:  # a run saved without config.yaml: its id tells it apart
            group.label = f"{group.model} ({group.best_run.run_id})"
            continue
        defaults = _schema_defaults()  # a key older runs lack counts as its default, as in config_key
        configs = [{**defaults, **g.best_run.config} for g in same if g.best_run.config]
        differ = sorted(
            key
            for key in {k for c in configs for k in c}
            if key not in IGNORED_KEYS and not key.startswith(IGNORED_PREFIXES)
            and len({repr(c.get(key)) for c in configs}) > 1
        )
        mine = {**defaults, **group.best_run.config}
        shown = ", ".join(f"{k}={mine.get(k)}" for k in differ[:3])
        group.label = f"{group.model} ({shown or group.best_run.run_id})"


# --- bootstrap ----------------------------------------------------------------------------
def weighted_scores(weights: np.ndarray, targets: np.ndarray, preds: np.ndarray, metric: str) -> np.ndarray:
    """``metric`` of one run for each row of ``weights`` (R, N): how often each image counts.

    Macro-F1 is over the classes present in the weighted targets, as the training metrics compute it.
    """
    weights = np.asarray(weights, dtype=np.float64)
    correct = (targets == preds).astype(np.float64)
    if metric == "acc":
        return weights @ correct / weights.sum(axis=1)
    if metric != "macro_f1":
        raise ValueError(f"no bootstrap for metric {metric!r}; choose from {CI_METRICS}")
    classes = np.arange(int(max(targets.max(), preds.max())) + 1)
    is_target = (targets[:, None] == classes).astype(np.float64)
    support = weights @ is_target
    predicted = weights @ (preds[:, None] == classes).astype(np.float64)
    hits = weights @ (is_target * correct[:, None])
    present = support > 0
    f1 = np.where(present, 2 * hits / np.maximum(support + predicted, 1e-12), 0.0)
    return f1.sum(axis=1) / present.sum(axis=1)


def score(targets: np.ndarray, preds: np.ndarray, metric: str) -> float:
    """``metric`` of one run over all its validation images."""
    return float(weighted_scores(np.ones((1, len(targets))), targets, preds, metric)[0])


def bootstrap_ci(
    predictions: Sequence[tuple[np.ndarray, np.ndarray]],
    metric: str,
    *,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
    confidence: float = CONFIDENCE,
) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean ``metric`` of runs scored on the same validation images.

    Every resample draws the N images with replacement (the same draw for every run), scores each
    run on it and averages the runs.
    """
    n = len(predictions[0][0])
    rng = np.random.default_rng(seed)
    weights = rng.multinomial(n, np.full(n, 1.0 / n), size=resamples)
    means = np.mean([weighted_scores(weights, t, p, metric) for t, p in predictions], axis=0)
    tail = (1.0 - confidence) / 2
    low, high = np.quantile(means, [tail, 1.0 - tail])
    return float(low), float(high)


# --- paired test --------------------------------------------------------------------------
@dataclass
class PairedTest:
    """McNemar's exact test of two runs on the same images."""

    images: int
    only_a: int  # images A gets right and B wrong
    only_b: int  # images B gets right and A wrong
    p_value: float

    @property
    def significant(self) -> bool:
        return self.p_value < ALPHA


def mcnemar_exact(correct_a: np.ndarray, correct_b: np.ndarray) -> PairedTest:
    """Two-sided exact McNemar test: binomial(n = discordant images, p = 1/2) on the smaller count."""
    correct_a, correct_b = np.asarray(correct_a, dtype=bool), np.asarray(correct_b, dtype=bool)
    only_a = int(np.sum(correct_a & ~correct_b))
    only_b = int(np.sum(~correct_a & correct_b))
    discordant = only_a + only_b
    p_value = 1.0 if discordant == 0 else min(1.0, 2.0 * float(binom.cdf(min(only_a, only_b), discordant, 0.5)))
    return PairedTest(images=len(correct_a), only_a=only_a, only_b=only_b, p_value=p_value)


def paired_test(a: RunGroup, b: RunGroup) -> PairedTest | str:
    """The test of the two groups' best runs, or why there is none (:data:`NO_PREDICTIONS`, :data:`OTHER_IMAGES`)."""
    pa, pb = a.best_run.val_predictions, b.best_run.val_predictions
    if pa is None or pb is None:
        return NO_PREDICTIONS
    if pa["targets"].shape != pb["targets"].shape or not np.array_equal(pa["targets"], pb["targets"]):
        return OTHER_IMAGES
    return mcnemar_exact(pa["preds"] == pa["targets"], pb["preds"] == pb["targets"])
