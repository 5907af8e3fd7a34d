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
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from research.config import (
    ConfigError,
    _nearest,
    all_keys,
    check_inputs,
    load_config,
    load_saved_config,
    parse_overrides,
)
from research.predict import new_images_step
from research.tracking.runs import RunFolder, write_json
from research.train import train

log = logging.getLogger(__name__)


def _sweeps():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the sweeps package still uses pydantic-1 style config keys
        import sweeps

    return sweeps


class TrialStopped(Exception):
    """Raised inside a trial when hyperband decides to stop it."""


def load_sweep_yaml(path: str | Path) -> dict[str, Any]:
    """Read a sweep YAML and check it with W&B's schema and against the config keys."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"sweep file {path} not found; see sweeps/ for examples")
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
    """Run up to ``count`` trials of a sweep YAML in this process.

    ``seed`` fixes the search engine's proposals (random/bayes); ``None`` draws fresh ones.
    """
    sw = _sweeps()
    config = load_sweep_yaml(sweep_yaml)
    metric = config.get("metric", {}).get("name", "val/macro_f1")
    goal = config.get("metric", {}).get("goal", "maximize")
    preset, fixed = command_preset_and_overrides(config.get("command") or [])
    user = parse_overrides(overrides)
    check_inputs(load_config(preset, [*fixed, *user]))  # fail now, not in trial 3
    swept = set(config["parameters"])
    clash = [o.split("=", 1)[0] for o in user if o.split("=", 1)[0] in swept]
    if clash:
        log.warning("overrides %s are swept parameters; the sweep's values win", clash)

    check_sweep_values(Path(sweep_yaml), config, preset, [*fixed, *user])

    sweep_id = sweep_id or f"{Path(sweep_yaml).stem}-{datetime.now():%Y%m%d-%H%M%S}"
    folder = Path(root) / sweep_id
    sweep_config = sw.SweepConfig(config)
    result = SweepResult(folder)
    runs, reruns = _continue(folder, config, metric, result, sw) if (folder / "trials.csv").exists() else ([], [])
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "sweep.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    engine_rng = EngineRandomness(seed)
    new = 0
    while True:
        if reruns:  # interrupted or failed trials of an earlier invocation run again first, same parameters
            previous = reruns.pop(0)
            suggestion, index = previous["run"], previous["trial"] - 1
            result.trials = [t for t in result.trials if t["trial"] != previous["trial"]]
        else:
            if new >= count:
                break
            with engine_rng:
                suggestion = sw.next_run(sweep_config, runs, validate=False)
            if suggestion is None:
                log.info("sweep %s: search space exhausted after %d trials", sweep_id, len(result.trials))
                break
            new += 1
            index = max((t["trial"] for t in result.trials), default=0)
            suggestion.name = f"{sweep_id}-t{index + 1:02d}"
            runs.append(suggestion)
        params = {k: _plain(v["value"]) for k, v in suggestion.config.items()}
        run_name = suggestion.name
        suggestion.state = sw.RunState.running
        suggestion.history = []
        trial_dir = folder / "trials" / run_name
        if (trial_dir / "last.pt").exists():  # an interrupted trial continues from its last epoch
            cfg = load_saved_config(trial_dir / "config.yaml", [f"run.resume={trial_dir}"])
        else:
            items = [*fixed, *user, *(f"{k}={v}" for k, v in params.items())]
            items += [f"run.dir={folder / 'trials'}", f"run.name={run_name}", f"wandb.group={sweep_id}"]
            cfg = load_config(preset, items)
        log.info("sweep %s trial %d (%d new of %d): %s", sweep_id, index + 1, new, count, params)

        def on_epoch(row: dict[str, float], run=suggestion) -> bool:
            run.history.append({metric: row[metric], "epoch": row["epoch"]})
            if "early_terminate" not in config:
                return False
            with engine_rng:
                to_stop = sw.stop_runs(sweep_config, runs, validate=False)
            return any(r.name == run.name for r in to_stop)

        trial: dict[str, Any] = {"trial": index + 1, "run_id": run_name, **params}
        try:
            summary = train(
                cfg, command=" ".join(build_agent_command(config, params)), on_epoch=on_epoch,
                after_fit=new_images_step(cfg.run.new_images) if cfg.run.new_images else None,
            )
        except KeyboardInterrupt:
            suggestion.state = sw.RunState.killed
            trial.update(state="interrupted", metric=None)
            result.trials.append(trial)
            _write_table(folder, result, metric, goal)
            log.warning(
                "sweep interrupted; finished trials are kept in %s. Continue it with the same command and "
                "--sweep-id %s (the interrupted trial resumes)", folder, sweep_id,
            )
            raise
        except Exception as err:  # a failed trial is recorded; the sweep goes on
            log.error("trial %s failed: %s", run_name, err)
            suggestion.state = sw.RunState.failed
            trial.update(state="failed", metric=None, error=str(err)[:200])
        else:
            value = summary.best.get(metric) if metric.startswith("val/") else getattr(summary, metric, None)
            stopped = summary.stopped_early_by == "sweep"
            suggestion.state = sw.RunState.finished
            suggestion.summary_metrics = {metric: value}
            trial.update(
                state="stopped (hyperband)" if stopped else "finished", metric=value,
                epochs=summary.epochs_run, run_dir=summary.run_dir,
            )
        result.trials.append(trial)
        result.trials.sort(key=lambda t: t["trial"])
        _write_table(folder, result, metric, goal)
    log.info("sweep %s done: %d trials; best %s", sweep_id, len(result.trials), result.best)
    return result


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
