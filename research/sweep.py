"""Local sweep runner on W&B's own search engine (the ``sweeps`` package of ``wandb[sweeps]``).

The same YAML works online (``wandb sweep sweeps/X.yaml`` then ``wandb agent ID``) and
here, offline: :func:`run_local_sweep` asks ``sweeps.next_run`` for each trial's
parameters (grid/random/bayes exactly as the W&B server does), trains it in-process with
:func:`research.train.train`, feeds every epoch back so ``sweeps.stop_runs`` can apply
hyperband early termination, and records the trials under ``<run.dir>/sweeps/<sweep-id>/``.
Each trial is a normal run folder with an offline W&B run (group = sweep id) that
``poetry run sync-runs`` uploads later, as a W&B sweep.

Continuation is exact: ``engine.json`` holds everything the engine was given (every trial's
parameters, state, metric and per-epoch history) and the engine's random state (random search
samples with Python's ``random``, bayes with numpy's global RNG; trials reseed both), saved after
every draw and every result; each trial's row is in ``trials.csv`` (state ``running``) before it trains.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import random
import re
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
    flatten,
    load_config,
    load_saved_config,
    parse_overrides,
)
from research.errors import InputFileError
from research.pipeline import Job, JobResult, train_many
from research.tracking.runs import RunFolder, read_json, write_json
from research.tracking.summary import RunSummary

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
    cap = config.get("run_cap")
    if cap is not None and (not isinstance(cap, int) or isinstance(cap, bool) or cap < 1):
        raise ConfigError(f"{path}: run_cap={cap!r} must be a whole number >= 1 (the most trials the sweep runs)")
    # The W&B server knows run_cap; the sweeps package's schema (an older copy) does not.
    violations = _sweeps().schema_violations_from_proposed_config({k: v for k, v in config.items() if k != "run_cap"})
    if violations:
        raise ConfigError(f"{path}: invalid sweep config: {'; '.join(map(str, violations))}")
    keys = set(all_keys())
    for name in config["parameters"]:
        if name not in keys:
            raise ConfigError(f"{path}: sweep parameter {name!r} is not a config key; {_nearest(name)}")
    return config


def engine_config(config: dict[str, Any]) -> Any:
    """The search engine's ``SweepConfig`` of a checked sweep YAML (``run_cap`` is the runner's, not the engine's)."""
    return _sweeps().SweepConfig({k: v for k, v in config.items() if k != "run_cap"})


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
    """The command ``wandb agent`` runs for these parameter values: the YAML's ``command`` with W&B's
    documented macros filled in (``${env}``, ``${interpreter}``, ``${program}``, ``${args}``,
    ``${args_no_hyphens}``, ``${args_no_boolean_flags}``, ``${args_json}``, ``${envvar:NAME}``)."""
    flags = [f"{k}={v}" for k, v in params.items()]
    macros: dict[str, list[str]] = {
        "env": ["/usr/bin/env"], "interpreter": ["python"], "program": [str(config.get("program", ""))],
        "args": [f"--{f}" for f in flags], "args_no_hyphens": flags, "args_json": [json.dumps(params)],
        "args_no_boolean_flags": [f"--{k}" if v is True else f"--{k}={v}" for k, v in params.items() if v is not False],
    }
    out: list[str] = []
    for chunk in map(str, config.get("command") or ["${env}", "${interpreter}", "${program}", "${args}"]):
        if chunk.startswith("${") and chunk.endswith("}") and chunk[2:-1] in macros:
            out += macros[chunk[2:-1]]
        else:
            out.append(re.sub(r"\$\{envvar:([^}]+)\}", lambda m: os.environ.get(m.group(1), m.group(1)), chunk))
    return out


class EngineRandomness:
    """The random state of the search engine: Python's ``random`` (random search) and numpy's global RNG
    (bayes). Every trial reseeds both from its own seed; ``with rng:`` swaps the engine's states in and
    out, so the engine never sees a trial's numbers, and :meth:`to_json` saves them with the sweep."""

    def __init__(self, seed: int | None = None, saved: dict[str, Any] | None = None) -> None:
        if saved is not None:
            name, keys, pos, has_gauss, cached = saved["numpy"]
            self._np = (name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached)
            version, internal, gauss = saved["python"]
            self._py = (version, tuple(internal), gauss)
        else:
            self._np = np.random.RandomState(seed).get_state()
            self._py = random.Random(seed).getstate()
        self._saved: tuple[Any, Any] | None = None

    def __enter__(self) -> EngineRandomness:
        self._saved = (np.random.get_state(), random.getstate())
        np.random.set_state(self._np)
        random.setstate(self._py)
        return self

    def __exit__(self, *exc: object) -> None:
        self._np, self._py = np.random.get_state(), random.getstate()
        np.random.set_state(self._saved[0])
        random.setstate(self._saved[1])

    def to_json(self) -> dict[str, Any]:
        name, keys, pos, has_gauss, cached = self._np
        version, internal, gauss = self._py
        return {"numpy": [name, np.asarray(keys).tolist(), int(pos), int(has_gauss), float(cached)],
                "python": [version, list(internal), gauss]}


FINISHED_STATES = ("finished", "stopped (hyperband)")
RUNNING = "running"
ENGINE_FILE = "engine.json"  # what the search engine was given and its random state


@dataclass
class Trial:
    """One trial: what the engine proposed and what came of it (a row of ``trials.csv``)."""

    number: int
    name: str
    params: dict[str, Any]
    state: str = RUNNING
    metric: float | None = None
    epochs: int | None = None
    run_dir: str | None = None
    error: str | None = None
    history: list[dict[str, float]] = field(default_factory=list)  # the sweep metric per epoch

    def row(self) -> dict[str, Any]:
        row = {"trial": self.number, "run_id": self.name, **self.params, "state": self.state, "metric": self.metric}
        row.update({k: v for k, v in (("epochs", self.epochs), ("run_dir", self.run_dir), ("error", self.error)) if v is not None})
        return row

    def engine_run(self, sw: Any, metric: str) -> Any:
        """The trial as the engine sees it (``sweeps.SweepRun``), rebuilt from the record every time, so a
        continued sweep gives the engine exactly what one uninterrupted invocation would."""
        finished = self.state in FINISHED_STATES
        state = sw.RunState.finished if finished else sw.RunState.running if self.state == RUNNING else sw.RunState.failed
        return sw.SweepRun(
            name=self.name, config={k: {"value": v} for k, v in self.params.items()}, state=state,
            summaryMetrics={metric: self.metric} if finished else {}, sampledHistory=list(self.history),
        )


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
    root: str | Path | None = None,
    seed: int | None = None,
) -> SweepResult:
    """Run up to ``count`` new trials of a sweep YAML in this process (interrupted or failed trials of
    an earlier invocation with the same ``sweep_id`` run again first, with their parameters).

    ``root``: where sweep folders go (default ``<run.dir>/sweeps``). ``seed`` fixes the search engine's
    proposals (random/bayes); ``None`` draws fresh ones. A continued sweep keeps its saved engine state.
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
    log.info("sweep %s done: %d trials; best %s", sweep.sweep_id, len(sweep.trials), sweep.result.best)
    return sweep.result


class LocalSweep:
    r"""One local sweep: its checked YAML, the trials the engine was given, and their record.

    :meth:`jobs` proposes trials (reruns first, then the engine's next points) as :class:`Job`\ s for
    :func:`research.pipeline.train_many`; :meth:`record` writes each result. Every change is saved at
    once (``engine.json``, ``trials.csv``, ``best.json``): a process killed at any point leaves a
    record that the next invocation continues exactly.
    """

    def __init__(
        self, sweep_yaml: str | Path, *, overrides: Sequence[str], sweep_id: str | None, root: str | Path | None, seed: int | None,
    ) -> None:
        self.sw = _sweeps()
        self.config = load_sweep_yaml(sweep_yaml)
        self.metric = self.config.get("metric", {}).get("name", "val/macro_f1")
        self.goal = self.config.get("metric", {}).get("goal", "maximize")
        self.preset, fixed = command_preset_and_overrides(self.config.get("command") or [])
        user = parse_overrides(overrides)
        self.base = [*fixed, *user, *SWEEP_TRIAL_OVERRIDES]
        base_cfg = load_config(self.preset, self.base)
        check_pretrained_weights(base_cfg)  # fail now, not in trial 3
        clash = [o.split("=", 1)[0] for o in user if o.split("=", 1)[0] in self.config["parameters"]]
        if clash:
            log.warning("overrides %s are swept parameters; the sweep's values win", clash)
        check_sweep_values(Path(sweep_yaml), self.config, self.preset, self.base)
        self.sweep_id = sweep_id or f"{Path(sweep_yaml).stem}-{datetime.now():%Y%m%d-%H%M%S}"
        # Trials go under the run.dir the user gave (default runs/): <run.dir>/sweeps/<sweep-id>/trials/.
        self.folder = Path(root if root is not None else Path(base_cfg.run.dir) / "sweeps") / self.sweep_id
        self.engine_config = engine_config(self.config)
        self.trials, self.seed, self.rng = self._load(seed)
        self.folder.mkdir(parents=True, exist_ok=True)
        (self.folder / "sweep.yaml").write_text(yaml.safe_dump(self.config, sort_keys=False))
        self.new = 0
        self.current: Trial | None = None  # the trial being trained
        self.result = SweepResult(self.folder)

    def _load(self, seed: int | None) -> tuple[list[Trial], int | None, EngineRandomness]:
        """A new sweep, or the record of an earlier invocation of the same one (checked: same YAML, same seed)."""
        if not (self.folder / ENGINE_FILE).exists() and not (self.folder / "trials.csv").exists():
            return [], seed, EngineRandomness(seed)
        saved = self.folder / "sweep.yaml"
        if saved.exists() and yaml.safe_load(saved.read_text()) != yaml.safe_load(yaml.safe_dump(self.config, sort_keys=False)):
            raise ConfigError(f"sweep folder {self.folder} holds another sweep (its sweep.yaml differs); choose another --sweep-id")
        if not (self.folder / ENGINE_FILE).exists():
            trials = _legacy_trials(self.folder, self.config, self.metric)
            log.warning("sweep %s was started by a version that did not save its search engine's state: new "
                        "proposals come from --seed afresh and may repeat earlier ones", self.sweep_id)
            return trials, seed, EngineRandomness(seed)
        state = read_json(self.folder / ENGINE_FILE)
        if seed is not None and seed != state.get("seed"):
            raise ConfigError(
                f"sweep {self.sweep_id} in {self.folder} was started with --seed {state.get('seed')}; continue it with "
                f"that --seed (or none: its saved engine state continues), or start another --sweep-id for --seed {seed}"
            )
        trials = [Trial(**t) for t in state["trials"]]
        done = sum(t.state in FINISHED_STATES for t in trials)
        log.info("continuing sweep %s (started with --seed %s): %d finished trial(s) kept, %d interrupted/failed to run again",
                 self.sweep_id, state.get("seed"), done, len(trials) - done)
        return trials, state.get("seed"), EngineRandomness(saved=state["rng"])

    def save(self) -> None:
        """``engine.json`` (exact: what the engine saw and its random state), ``trials.csv`` and ``best.json``."""
        write_json(self.folder / ENGINE_FILE, {
            "seed": self.seed, "rng": self.rng.to_json(),
            "trials": [{**vars(t), "history": list(t.history)} for t in self.trials],
        })
        self.result.trials = [t.row() for t in self.trials]
        _write_table(self.folder, self.result, self.metric, self.goal)

    def jobs(self, count: int) -> Iterator[Job]:
        """Trials to train: interrupted or failed ones of an earlier invocation first (same parameters),
        then up to ``count`` new proposals of the engine; stops early when the space is exhausted or the
        YAML's ``run_cap`` is reached."""
        for trial in [t for t in self.trials if t.state not in FINISHED_STATES]:
            job = self._rerun(trial)
            if job is not None:
                yield job
        cap = self.config.get("run_cap")
        while self.new < count:
            if cap is not None and len(self.trials) >= cap:
                log.info("sweep %s: run_cap %d reached (%d trials)", self.sweep_id, cap, len(self.trials))
                return
            trial = self._draw()
            if trial is None:
                log.info("sweep %s: search space exhausted after %d trials", self.sweep_id, len(self.trials))
                return
            yield self._job(trial, count)

    def _draw(self) -> Trial | None:
        """The engine's next proposal, recorded (state ``running``) before anything trains."""
        with self.rng:
            suggestion = self.sw.next_run(self.engine_config, self._engine_runs(), validate=False)
        if suggestion is None:
            return None
        number = max((t.number for t in self.trials), default=0) + 1
        params = {k: _plain(v["value"]) for k, v in suggestion.config.items()}
        trial = Trial(number, f"{self.sweep_id}-t{number:02d}", params)
        self.trials.append(trial)
        self.new += 1
        self.save()
        return trial

    def _engine_runs(self) -> list[Any]:
        return [t.engine_run(self.sw, self.metric) for t in self.trials]

    def _rerun(self, trial: Trial) -> Job | None:
        """An unfinished trial again, with the parameters it was trained with (its folder's config.yaml);
        one whose run finished after all (killed before its row was updated) is recorded, not retrained."""
        folder = RunFolder(self.folder / "trials" / trial.name)
        summary = folder.read_summary()
        if summary.get("status") == "finished":
            log.info("sweep %s: trial %d had finished before the sweep stopped; recorded as it is", self.sweep_id, trial.number)
            trial.history = _metric_history(folder, self.metric)
            finished = RunSummary.from_dict(summary, run_id=trial.name)
            finished.run_dir = str(folder.path)
            self._finished(trial, finished)
            self.save()
            return None
        if folder.config_path.exists():
            saved = flatten(load_saved_config(folder.config_path))
            trained = {k: saved[k] for k in trial.params if k in saved}
            if trained != trial.params:
                log.warning("trial %d: parameters %s recorded, %s trained; the record now says what was trained",
                            trial.number, trial.params, trained)
                trial.params.update(trained)
        return self._job(trial, None)

    def _job(self, trial: Trial, count: int | None) -> Job:
        trial_dir = self.folder / "trials" / trial.name
        trial.state, trial.error, trial.history = RUNNING, None, []
        if (trial_dir / "last.pt").exists():  # an interrupted trial continues from its last epoch
            cfg = load_saved_config(trial_dir / "config.yaml", [f"run.resume={trial_dir}"])
            trial.history = _metric_history(RunFolder(trial_dir), self.metric)
        else:
            items = [*self.base, *(f"{k}={v}" for k, v in trial.params.items())]
            items += [f"run.dir={self.folder / 'trials'}", f"run.name={trial.name}", f"wandb.group={self.sweep_id}"]
            cfg = load_config(self.preset, items)
        self.save()
        which = "rerun" if count is None else f"{self.new} new of {count}"
        log.info("sweep %s trial %d (%s): %s", self.sweep_id, trial.number, which, trial.params)
        self.current = trial
        command = " ".join(build_agent_command(self.config, trial.params))
        return Job(f"trial {trial.name}", cfg, command, on_epoch=self._on_epoch)

    def _on_epoch(self, row: dict[str, float]) -> bool:
        """Feed the epoch to the engine; True when hyperband stops the trial here."""
        trial = self.current
        trial.history.append({self.metric: row[self.metric], "epoch": row["epoch"]})
        if "early_terminate" not in self.config:
            return False
        with self.rng:
            to_stop = self.sw.stop_runs(self.engine_config, self._engine_runs(), validate=False)
        return any(r.name == trial.name for r in to_stop)

    def record(self, result: JobResult) -> None:
        """The trial's state and metric, saved (``engine.json``, ``trials.csv``, ``best.json``)."""
        trial = self.current
        if result.interrupted:
            trial.state, trial.metric = "interrupted", None
        elif result.summary is None:
            trial.state, trial.metric, trial.error = "failed", None, str(result.error)[:200]
        else:
            self._finished(trial, result.summary)
        self.save()

    def _finished(self, trial: Trial, summary: RunSummary) -> None:
        trial.metric = summary.best.get(self.metric) if self.metric.startswith("val/") else getattr(summary, self.metric, None)
        trial.state = "stopped (hyperband)" if summary.stopped_early_by == "sweep" else "finished"
        trial.epochs, trial.run_dir = summary.epochs_run, summary.run_dir


def _legacy_trials(folder: Path, config: dict[str, Any], metric: str) -> list[Trial]:
    """The trials of a sweep folder written before ``engine.json`` existed, from its ``trials.csv``."""
    with (folder / "trials.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    trials = []
    for row in rows:
        cells = {k: _parse_cell(v) for k, v in row.items() if v not in ("", None)}
        trial = Trial(int(cells["trial"]), str(cells["run_id"]), {k: cells[k] for k in config["parameters"] if k in cells},
                      state=str(cells.get("state", "failed")), metric=cells.get("metric"), epochs=cells.get("epochs"),
                      run_dir=cells.get("run_dir"), error=cells.get("error"))
        if trial.state in FINISHED_STATES and trial.run_dir:
            trial.history = _metric_history(RunFolder(trial.run_dir), metric)
        trials.append(trial)
    return trials


def _metric_history(run: RunFolder, metric: str) -> list[dict[str, float]]:
    """The sweep metric of every epoch in a run's history.csv, as the engine takes it."""
    return [{metric: row[metric], "epoch": row["epoch"]} for row in run.read_history() if metric in row]


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
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=columns)
    writer.writeheader()
    writer.writerows(result.trials)
    RunFolder(folder).write_text("trials.csv", text.getvalue())  # atomic: a killed sweep leaves the last whole table
    write_json(folder / "best.json", {"metric": metric, "goal": goal, "best": result.best, "trials": len(result.trials)})
