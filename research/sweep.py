"""Local sweep runner on W&B's own search engine (the ``sweeps`` package of ``wandb[sweeps]``).

The same YAML works online (``wandb sweep sweeps/X.yaml`` then ``wandb agent ID``) and
here, offline: :func:`run_local_sweep` asks ``sweeps.next_run`` for each trial's
parameters (grid/random/bayes exactly as the W&B server does), trains it in-process with
:func:`research.train.train`, feeds every epoch back so ``sweeps.stop_runs`` can apply
hyperband early termination, and records the trials under ``runs/sweeps/<sweep-id>/``.
Each trial is a normal run folder with an offline W&B run (group = sweep id) that
``wandb sync`` uploads later.
"""

from __future__ import annotations

import csv
import logging
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from omegaconf import DictConfig

from research.builders.model import build_model
from research.config import (
    SWEEP_TRIAL_OVERRIDES,
    ConfigError,
    _nearest,
    all_keys,
    check_inputs,
    load_config,
    load_saved_config,
    parse_overrides,
)
from research.errors import InputFileError
from research.pipeline import Job, JobResult, train_many
from research.tracking.runs import RunFolder, write_json

log = logging.getLogger(__name__)


def _sweeps():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the sweeps package still uses pydantic-1 style config keys
        import sweeps

    return sweeps


def check_pretrained_weights(cfg: DictConfig) -> None:
    """The inputs every trial reads, and the pretrained weights once (downloaded into the hub cache, or read from it):
    with ``model.pretrained_fallback`` off in every trial, a sweep whose weights cannot be had stops here, before
    trial 1, instead of failing each trial (or, with the fallback, silently mixing pretrained and random trials)."""
    check_inputs(cfg)
    if cfg.model.pretrained and not cfg.model.pretrained_file and not cfg.model.get("init_from"):
        build_model(cfg)


class TrialStopped(Exception):
    """Raised inside a trial when hyperband decides to stop it."""


def load_sweep_yaml(path: str | Path) -> dict[str, Any]:
    """Read a sweep YAML and check it with W&B's schema and against the config keys."""
    path = Path(path)
    if not path.exists():
        raise InputFileError(f"sweep file {path} not found; see sweeps/ for examples")
    try:
        config = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError(f"{path}{where}: not valid YAML ({problem}); a sweep file is a mapping with method, metric, parameters") from None
    if not isinstance(config, dict) or "parameters" not in config:
        raise ConfigError(f"{path}: not a W&B sweep config (needs a top-level mapping with method, metric, parameters)")
    violations = _sweeps().schema_violations_from_proposed_config(config)
    if violations:
        raise ConfigError(f"{path}: invalid sweep config: {'; '.join(map(str, violations))}")
    keys = set(all_keys())
    for name in config["parameters"]:
        if name not in keys:
            raise ConfigError(f"{path}: sweep parameter {name!r} is not a config key; {_nearest(name)}")
    return config


def candidate_values(spec: dict[str, Any]) -> list[Any]:
    """The values of one sweep parameter that can be checked before any trial: every listed value,
    the fixed value, or both ends of a range."""
    if "values" in spec:
        return list(spec["values"])
    if "value" in spec:
        return [spec["value"]]
    return [spec[k] for k in ("min", "max") if k in spec and not str(spec.get("distribution", "")).startswith(("log", "q_log", "inv_log"))]


def check_sweep_values(path: Path, config: dict[str, Any], preset: str | None, base: Sequence[str]) -> None:
    """Every value a trial can receive is a valid config value: found now, not after trial 1."""
    for name, spec in config["parameters"].items():
        for value in candidate_values(spec if isinstance(spec, dict) else {}):
            try:
                load_config(preset, [*base, f"{name}={value}"])
            except ConfigError as err:
                raise ConfigError(f"{path}: sweep parameter {name} value {value!r}: {err}") from None


def command_preset_and_overrides(command: Sequence[str]) -> tuple[str | None, list[str]]:
    """The ``--config PRESET`` and literal ``key=value`` items of a sweep YAML's ``command``."""
    preset, fixed = None, []
    items = [str(c) for c in command]
    for i, item in enumerate(items):
        if item in ("--config", "-c") and i + 1 < len(items):
            preset = items[i + 1]
        elif item.startswith("--config="):
            preset = item.split("=", 1)[1]
        elif "=" in item and not item.startswith("${"):
            fixed.append(item.lstrip("-"))
    return preset, fixed


def build_agent_command(config: dict[str, Any], params: dict[str, Any]) -> list[str]:
    """The command ``wandb agent`` runs for these parameter values (wandb's own builders)."""
    from wandb.sdk.launch.sweeps import utils as sweep_utils

    command = sweep_utils.create_sweep_command(list(config.get("command") or []))
    sweep_vars = sweep_utils.create_sweep_command_args({"args": {k: {"value": v} for k, v in params.items()}})
    sweep_vars.update(interpreter=["python"], program=[config.get("program", "")], env=["/usr/bin/env"])
    out: list[str] = []
    for chunk in command:
        chunk = str(chunk)
        if chunk.startswith("${") and chunk.endswith("}"):
            out += [str(x) for x in sweep_vars.get(chunk[2:-1]) or []]
        else:
            out.append(chunk)
    return out


class EngineRandomness:
    """The sweeps engine draws from numpy's global RNG, which every trial reseeds from its own
    seed; without its own saved state the engine would see the same numbers after each trial
    and propose the same parameters again. ``with rng:`` swaps the engine's state in and out."""

    def __init__(self, seed: int | None) -> None:
        self._state = np.random.RandomState(seed).get_state()
        self._saved = None

    def __enter__(self) -> EngineRandomness:
        self._saved = np.random.get_state()
        np.random.set_state(self._state)
        return self

    def __exit__(self, *exc: object) -> None:
        self._state = np.random.get_state()
        np.random.set_state(self._saved)


@dataclass
class SweepResult:
    folder: Path
    trials: list[dict[str, Any]] = field(default_factory=list)
    best: dict[str, Any] | None = None


def _plain(value: Any) -> Any:
    return value.item() if hasattr(value, "item") else value


def run_local_sweep(
    sweep_yaml: str | Path,
    *,
    count: int,
    overrides: Sequence[str] = (),
    sweep_id: str | None = None,
    root: str | Path = "runs/sweeps",
    seed: int | None = None,
) -> SweepResult:
    """Run up to ``count`` new trials of a sweep YAML in this process (interrupted or failed trials of
    an earlier invocation with the same ``sweep_id`` run again first, with their parameters).

    ``seed`` fixes the search engine's proposals (random/bayes); ``None`` draws fresh ones.
    """
    sweep = LocalSweep(sweep_yaml, overrides=overrides, sweep_id=sweep_id, root=root, seed=seed)
    try:
        train_many(sweep.jobs(count), on_result=sweep.record)
    except KeyboardInterrupt:
        log.warning(
            "sweep interrupted; finished trials are kept in %s. Continue it with the same command and "
            "--sweep-id %s (the interrupted trial resumes)", sweep.folder, sweep.sweep_id,
        )
        raise
    log.info("sweep %s done: %d trials; best %s", sweep.sweep_id, len(sweep.result.trials), sweep.result.best)
    return sweep.result


class LocalSweep:
    r"""One local sweep: its checked YAML, the search engine's history, and the trials' record.

    :meth:`jobs` proposes trials (reruns first, then the engine's next points) as :class:`Job`\ s for
    :func:`research.pipeline.train_many`; :meth:`record` writes each result to ``trials.csv`` and
    ``best.json`` and tells the engine.
    """

    def __init__(self, sweep_yaml: str | Path, *, overrides: Sequence[str], sweep_id: str | None, root: str | Path, seed: int | None) -> None:
        self.sw = _sweeps()
        self.config = load_sweep_yaml(sweep_yaml)
        self.metric = self.config.get("metric", {}).get("name", "val/macro_f1")
        self.goal = self.config.get("metric", {}).get("goal", "maximize")
        self.preset, fixed = command_preset_and_overrides(self.config.get("command") or [])
        user = parse_overrides(overrides)
        self.base = [*fixed, *user, *SWEEP_TRIAL_OVERRIDES]
        check_pretrained_weights(load_config(self.preset, self.base))  # fail now, not in trial 3
        clash = [o.split("=", 1)[0] for o in user if o.split("=", 1)[0] in self.config["parameters"]]
        if clash:
            log.warning("overrides %s are swept parameters; the sweep's values win", clash)
        check_sweep_values(Path(sweep_yaml), self.config, self.preset, self.base)
        self.sweep_id = sweep_id or f"{Path(sweep_yaml).stem}-{datetime.now():%Y%m%d-%H%M%S}"
        self.folder = Path(root) / self.sweep_id
        self.engine_config = self.sw.SweepConfig(self.config)
        self.result = SweepResult(self.folder)
        self.runs, self.reruns = (
            _continue(self.folder, self.config, self.metric, self.result, self.sw) if (self.folder / "trials.csv").exists() else ([], [])
        )
        self.folder.mkdir(parents=True, exist_ok=True)
        (self.folder / "sweep.yaml").write_text(yaml.safe_dump(self.config, sort_keys=False))
        self.rng = EngineRandomness(seed)
        self.new = 0
        self.current: dict[str, Any] = {}  # the trial being trained: its row and the engine's run

    def jobs(self, count: int) -> Iterator[Job]:
        """Trials to train: interrupted or failed ones of an earlier invocation first (same parameters),
        then up to ``count`` new proposals of the engine; stops early when the space is exhausted."""
        while True:
            if self.reruns:
                previous = self.reruns.pop(0)
                suggestion, index = previous["run"], previous["trial"] - 1
                self.result.trials = [t for t in self.result.trials if t["trial"] != previous["trial"]]
            else:
                if self.new >= count:
                    return
                with self.rng:
                    suggestion = self.sw.next_run(self.engine_config, self.runs, validate=False)
                if suggestion is None:
                    log.info("sweep %s: search space exhausted after %d trials", self.sweep_id, len(self.result.trials))
                    return
                self.new += 1
                index = max((t["trial"] for t in self.result.trials), default=0)
                suggestion.name = f"{self.sweep_id}-t{index + 1:02d}"
                self.runs.append(suggestion)
            yield self._job(suggestion, index, count)

    def _job(self, suggestion: Any, index: int, count: int) -> Job:
        params = {k: _plain(v["value"]) for k, v in suggestion.config.items()}
        suggestion.state = self.sw.RunState.running
        suggestion.history = []
        trial_dir = self.folder / "trials" / suggestion.name
        if (trial_dir / "last.pt").exists():  # an interrupted trial continues from its last epoch
            cfg = load_saved_config(trial_dir / "config.yaml", [f"run.resume={trial_dir}"])
        else:
            items = [*self.base, *(f"{k}={v}" for k, v in params.items())]
            items += [f"run.dir={self.folder / 'trials'}", f"run.name={suggestion.name}", f"wandb.group={self.sweep_id}"]
            cfg = load_config(self.preset, items)
        log.info("sweep %s trial %d (%d new of %d): %s", self.sweep_id, index + 1, self.new, count, params)
        self.current = {"row": {"trial": index + 1, "run_id": suggestion.name, **params}, "run": suggestion}
        command = " ".join(build_agent_command(self.config, params))
        return Job(f"trial {suggestion.name}", cfg, command, on_epoch=self._on_epoch)

    def _on_epoch(self, row: dict[str, float]) -> bool:
        """Feed the epoch to the engine; True when hyperband stops the trial here."""
        run = self.current["run"]
        run.history.append({self.metric: row[self.metric], "epoch": row["epoch"]})
        if "early_terminate" not in self.config:
            return False
        with self.rng:
            to_stop = self.sw.stop_runs(self.engine_config, self.runs, validate=False)
        return any(r.name == run.name for r in to_stop)

    def record(self, result: JobResult) -> None:
        """The trial's state and metric in ``trials.csv`` / ``best.json``, and the engine's run updated."""
        trial, run, sw = self.current["row"], self.current["run"], self.sw
        if result.interrupted:
            run.state = sw.RunState.killed
            trial.update(state="interrupted", metric=None)
        elif result.summary is None:
            run.state = sw.RunState.failed
            trial.update(state="failed", metric=None, error=str(result.error)[:200])
        else:
            summary = result.summary
            value = summary.best.get(self.metric) if self.metric.startswith("val/") else getattr(summary, self.metric, None)
            run.state = sw.RunState.finished
            run.summary_metrics = {self.metric: value}
            stopped = summary.stopped_early_by == "sweep"
            trial.update(
                state="stopped (hyperband)" if stopped else "finished", metric=value,
                epochs=summary.epochs_run, run_dir=summary.run_dir,
            )
        self.result.trials.append(trial)
        self.result.trials.sort(key=lambda t: t["trial"])
        _write_table(self.folder, self.result, self.metric, self.goal)


def _continue(
    folder: Path, config: dict[str, Any], metric: str, result: SweepResult, sw: Any
) -> tuple[list[Any], list[dict[str, Any]]]:
    """Reload an earlier invocation of the same sweep: its trials become the engine's history (a grid
    never repeats a finished point; bayes learns from them), finished results are kept, and
    interrupted or failed trials are returned to run again."""
    saved = folder / "sweep.yaml"
    if saved.exists() and yaml.safe_load(saved.read_text()) != yaml.safe_load(yaml.safe_dump(config, sort_keys=False)):
        raise ConfigError(
            f"sweep folder {folder} holds another sweep (its sweep.yaml differs); choose another --sweep-id"
        )
    with (folder / "trials.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    runs, reruns = [], []
    for row in rows:
        trial = {k: _parse_cell(v) for k, v in row.items() if v not in ("", None)}
        trial["trial"] = int(trial["trial"])
        params = {k: trial[k] for k in config["parameters"] if k in trial}
        finished = trial.get("state") in ("finished", "stopped (hyperband)")
        history = []
        if finished and trial.get("run_dir"):
            history = [{metric: r[metric], "epoch": r["epoch"]} for r in RunFolder(trial["run_dir"]).read_history() if metric in r]
        run = sw.SweepRun(
            name=str(trial["run_id"]), config={k: {"value": v} for k, v in params.items()},
            state=sw.RunState.finished if finished else sw.RunState.failed,
            summaryMetrics={metric: trial.get("metric")} if finished else {}, sampledHistory=history,
        )
        runs.append(run)
        result.trials.append(trial)
        if not finished:
            reruns.append({"trial": trial["trial"], "run": run})
    done = len(rows) - len(reruns)
    log.info(
        "continuing sweep %s: %d finished trial(s) kept, %d interrupted/failed to run again", folder.name, done, len(reruns)
    )
    return runs, reruns


def _parse_cell(value: str) -> Any:
    """A trials.csv cell back to its value (numbers, booleans, strings)."""
    try:
        return yaml.safe_load(value)
    except yaml.YAMLError:
        return value


def _write_table(folder: Path, result: SweepResult, metric: str, goal: str) -> None:
    scored = [t for t in result.trials if t.get("metric") is not None]
    if scored:
        pick = max if goal == "maximize" else min
        result.best = pick(scored, key=lambda t: t["metric"])
    columns = list(dict.fromkeys(k for t in result.trials for k in t))
    with (folder / "trials.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns)
        writer.writeheader()
        writer.writerows(result.trials)
    write_json(folder / "best.json", {"metric": metric, "goal": goal, "best": result.best, "trials": len(result.trials)})
