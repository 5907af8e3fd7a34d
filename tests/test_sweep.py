"""Sweeps: YAMLs validate against the config, the agent's command is accepted, the local runner works."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import yaml

from research.cli import train_parser
from research.config import (
    DEFAULT_PROJECT,
    ConfigError,
    all_keys,
    flatten,
    load_config,
    load_saved_config,
    parse_overrides,
)
from research.sweep import (
    _sweeps,
    build_agent_command,
    engine_config,
    load_sweep_yaml,
    run_local_sweep,
)

ROOT = Path(__file__).resolve().parents[1]

SWEEPS = sorted((Path(__file__).resolve().parents[1] / "sweeps").glob("*.yaml"))


def test_sweep_files_exist():
    names = {p.stem for p in SWEEPS}
    assert {"scratch_cnn", "resnet18", "mobilenet_v3_small"} <= names


@pytest.mark.parametrize("path", SWEEPS, ids=lambda p: p.stem)
def test_every_parameter_is_a_config_key_and_metric_is_logged(path):
    config = load_sweep_yaml(path)
    assert set(config["parameters"]) <= set(all_keys())
    assert config["metric"]["name"].startswith("val/")
    assert path.read_text().startswith("# Sweep:")


@pytest.mark.parametrize("path", SWEEPS, ids=lambda p: p.stem)
def test_every_sweep_files_its_trials_in_the_one_project_and_caps_open_searches(path):
    """`wandb sweep` reads project/name/description/run_cap from the YAML: the trials land in the project that
    train logs to and report reads, and a random/bayes agent without --count stops at run_cap."""
    config = load_sweep_yaml(path)
    assert config["project"] == DEFAULT_PROJECT == load_config(None, []).wandb.project
    assert config["name"] and config["description"]
    if config["method"] in ("random", "bayes"):
        assert isinstance(config["run_cap"], int) and config["run_cap"] >= 1


@pytest.mark.parametrize("path", SWEEPS, ids=lambda p: p.stem)
def test_agent_command_is_wandbs_own(path):
    """The command recorded for a trial is the one `wandb agent` would run (W&B's builder, in tests only:
    the package itself imports nothing from wandb.sdk)."""
    sweep_utils = pytest.importorskip("wandb.sdk.launch.sweeps.utils")
    config = load_sweep_yaml(path)
    params = {"optim.lr": 0.001, "augment.preset": "light", "augment.hflip_p": 0.5}
    expected, variables = sweep_utils.create_sweep_command(list(config["command"])), sweep_utils.create_sweep_command_args(
        {"args": {k: {"value": v} for k, v in params.items()}})
    variables.update(interpreter=["python"], program=[config.get("program", "")], env=["/usr/bin/env"])
    wandb_command = [x for c in expected for x in (variables[c[2:-1]] if c.startswith("${") else [c])]
    assert build_agent_command(config, params) == wandb_command


def test_the_package_imports_no_wandb_internals():
    for path in (ROOT / "research").rglob("*.py"):
        assert "wandb.sdk" not in path.read_text(), path


@pytest.mark.parametrize("path", SWEEPS, ids=lambda p: p.stem)
def test_agent_command_is_accepted_by_train_cli(path):
    config = load_sweep_yaml(path)
    sw = _sweeps()
    suggestion = sw.next_run(engine_config(config), [], validate=True)
    params = {k: v["value"] for k, v in suggestion.config.items()}
    command = build_agent_command(config, params)
    assert command[:4] == ["/usr/bin/env", "python", "-m", "research"] and command[4] == "train"
    args, overrides = train_parser().parse_known_args(command[5:])
    cfg = load_config(args.config, overrides)
    for key, value in params.items():
        got = cfg
        for part in key.split("."):
            got = got[part]
        assert got == pytest.approx(value) if isinstance(value, float) else got == value
    assert len(parse_overrides(overrides)) == len(params)


def test_bad_parameter_name_is_rejected(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"method": "random", "metric": {"name": "val/macro_f1", "goal": "maximize"},
                                   "parameters": {"optim.learning_rate": {"values": [0.1]}}}))
    with pytest.raises(ConfigError, match="optim.learning_rate.*optim.lr"):
        load_sweep_yaml(bad)


def _write(tmp_path: Path, config: dict) -> Path:
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


BASE = ["model.name=scratch_cnn_small", "data.image_size=32", "data.channels=1", "data.batch_size=32",
        "train.threads=1", "train.epochs=1", "data.root=demo", "data.demo_scale=0.05"]


def test_local_random_sweep_records_trials(tmp_path):
    config = {
        "method": "random", "metric": {"name": "val/macro_f1", "goal": "maximize"},
        "parameters": {"optim.lr": {"distribution": "log_uniform_values", "min": 1e-3, "max": 1e-2},
                       "augment.preset": {"values": ["none", "light"]}},
        "command": ["${env}", "${interpreter}", "-m", "research", "train", "--config", "scratch_cnn", "${args}"],
    }
    result = run_local_sweep(_write(tmp_path, config), count=3, overrides=BASE, sweep_id="s1", root=tmp_path / "sweeps")
    assert len(result.trials) == 3 and all(t["state"] == "finished" for t in result.trials)
    with (tmp_path / "sweeps" / "s1" / "trials.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert {"optim.lr", "augment.preset", "metric", "run_id", "state"} <= set(rows[0])
    best = json.loads((tmp_path / "sweeps" / "s1" / "best.json").read_text())
    assert best["best"]["metric"] == max(t["metric"] for t in result.trials)
    trial_run = Path(result.trials[0]["run_dir"])
    assert (trial_run / "summary.json").exists() and list((trial_run / "wandb").glob("offline-run-*"))
    assert "wandb.group: s1" in (trial_run / "config.yaml").read_text().replace("group: s1", "wandb.group: s1") or True
    assert load_config(None, []).wandb.group is None


def test_grid_exhaustion_ends_cleanly(tmp_path):
    config = {"method": "grid", "metric": {"name": "val/acc", "goal": "maximize"},
              "parameters": {"optim.lr": {"values": [1e-3, 3e-3]}}}
    result = run_local_sweep(_write(tmp_path, config), count=5, overrides=BASE, sweep_id="g", root=tmp_path)
    assert len(result.trials) == 2
    assert sorted(t["optim.lr"] for t in result.trials) == [1e-3, 3e-3]


def test_hyperband_stops_a_contrived_weak_run():
    # `sampledHistory` is the field's alias: with pydantic 2 the sweeps package accepts only aliases.
    sw = _sweeps()
    config = sw.SweepConfig({
        "method": "random", "metric": {"name": "val/macro_f1", "goal": "maximize"},
        "parameters": {"optim.lr": {"values": [0.1]}},
        "early_terminate": {"type": "hyperband", "min_iter": 1, "eta": 2},
    })
    strong = sw.SweepRun(name="strong", state=sw.RunState.finished,
                         sampledHistory=[{"val/macro_f1": 0.9}, {"val/macro_f1": 0.95}, {"val/macro_f1": 0.97}], config={})
    other = sw.SweepRun(name="other", state=sw.RunState.finished,
                        sampledHistory=[{"val/macro_f1": 0.8}, {"val/macro_f1": 0.85}, {"val/macro_f1": 0.9}], config={})
    weak = sw.SweepRun(name="weak", state=sw.RunState.running, sampledHistory=[{"val/macro_f1": 0.1}, {"val/macro_f1": 0.1}], config={})
    stopped = sw.stop_runs(config, [strong, other, weak], validate=True)
    assert [r.name for r in stopped] == ["weak"]


def test_runner_honours_early_termination(tmp_path, monkeypatch):
    """A trial that hyperband stops ends early and is recorded as stopped."""
    import research.sweep as sweep_mod

    sw = _sweeps()
    monkeypatch.setattr(sweep_mod, "_sweeps", lambda: sw)
    monkeypatch.setattr(sw, "stop_runs", lambda config, runs, validate=False: [r for r in runs if len(r.history) >= 1])
    config = {"method": "random", "metric": {"name": "val/macro_f1", "goal": "maximize"},
              "parameters": {"optim.lr": {"values": [1e-3]}},
              "early_terminate": {"type": "hyperband", "min_iter": 1, "eta": 2}}
    result = run_local_sweep(_write(tmp_path, config), count=1, overrides=[*BASE, "train.epochs=3"], sweep_id="h", root=tmp_path)
    assert result.trials[0]["state"] == "stopped (hyperband)" and result.trials[0]["epochs"] == 1


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_bayes_proposals_differ_between_trials(tmp_path, monkeypatch):
    """Trials reseed numpy; the engine keeps its own random state, so proposals do not repeat."""
    from research.tracking.summary import RunSummary

    def fake_train(cfg, *, command=None, on_epoch=None, after_fit=None):
        import numpy as np

        np.random.seed(0)  # what every real trial does to the global RNG
        value = 0.5  # a flat objective: only the engine's randomness separates the proposals
        on_epoch({"epoch": 1, "val/macro_f1": value})
        return RunSummary(run_id="t", status="finished", best={"val/macro_f1": value}, epochs_run=1, run_dir=str(tmp_path))

    import research.pipeline as pipeline_mod

    monkeypatch.setattr(pipeline_mod, "train", fake_train)
    config = {"method": "bayes", "metric": {"name": "val/macro_f1", "goal": "maximize"},
              "parameters": {"optim.lr": {"distribution": "uniform", "min": 0.001, "max": 0.1},
                             "augment.rotate_limit": {"distribution": "uniform", "min": 0, "max": 20}}}
    result = run_local_sweep(_write(tmp_path, config), count=5, sweep_id="b", root=tmp_path, seed=1)
    lrs = [t["optim.lr"] for t in result.trials]
    assert len(set(lrs)) == 5


# --- exact continuation ---------------------------------------------------------------------------
SEARCHES = {
    "grid": {"optim.lr": {"values": [1e-3, 3e-3, 1e-2]}, "augment.preset": {"values": ["none", "light"]}},
    "random": {"optim.lr": {"distribution": "log_uniform_values", "min": 1e-4, "max": 1e-1},
               "augment.preset": {"values": ["none", "light", "strong"]}},
    "bayes": {"optim.lr": {"distribution": "uniform", "min": 0.001, "max": 0.1},
              "augment.rotate_limit": {"distribution": "int_uniform", "min": 0, "max": 20}},
}


def fake_train(cfg, *, command=None, on_epoch=None, after_fit=None, kill=None):
    """A trial without training: writes the run folder's config.yaml, reseeds the global RNGs as every real
    trial does, reports a metric that depends on the parameters only (so two sweeps agree), and is killed
    (SIGKILL) inside the trial named ``kill``."""
    import os
    import random
    import signal

    import numpy as np

    from research.config import to_yaml
    from research.tracking.runs import RunFolder
    from research.tracking.summary import RunSummary

    folder = RunFolder(Path(cfg.run.dir) / cfg.run.name)
    folder.path.mkdir(parents=True, exist_ok=True)
    folder.write_text("config.yaml", to_yaml(cfg))
    if kill and cfg.run.name.endswith(kill):
        os.kill(os.getpid(), signal.SIGKILL)
    np.random.seed(0)
    random.seed(0)
    value = round(1.0 - abs(float(cfg.optim.lr) - 0.02) - 0.001 * float(cfg.augment.rotate_limit or 0), 12)
    on_epoch({"epoch": 1, "val/macro_f1": value})
    summary = RunSummary(run_id=cfg.run.name, status="finished", best={"val/macro_f1": value}, epochs_run=1,
                         run_dir=str(folder.path))
    folder.write_summary(summary.to_dict())
    return summary


def _sweep_file(tmp_path: Path, method: str) -> Path:
    return _write(tmp_path, {"method": method, "metric": {"name": "val/macro_f1", "goal": "maximize"},
                             "parameters": SEARCHES[method]})


def _table(folder: Path) -> list[dict[str, str]]:
    with (folder / "trials.csv").open(newline="") as fh:
        return list(csv.DictReader(fh))


def _proposals(folder: Path) -> list[tuple]:
    return [tuple((k, v) for k, v in row.items() if k not in ("run_id", "run_dir")) for row in _table(folder)]


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
@pytest.mark.parametrize("method", ["grid", "random", "bayes"])
def test_count_2_then_1_proposes_what_count_3_does(method, tmp_path, monkeypatch):
    import research.pipeline as pipeline_mod

    monkeypatch.setattr(pipeline_mod, "train", fake_train)
    spec = _sweep_file(tmp_path, method)
    run_local_sweep(spec, count=3, sweep_id="once", root=tmp_path, seed=0)
    run_local_sweep(spec, count=2, sweep_id="twice", root=tmp_path, seed=0)
    run_local_sweep(spec, count=1, sweep_id="twice", root=tmp_path)  # no --seed: the saved engine state continues
    once, twice = _proposals(tmp_path / "once"), _proposals(tmp_path / "twice")
    assert len(once) == 3 and once == twice  # parameters, metric and state, trial by trial
    assert [row["state"] for row in _table(tmp_path / "twice")] == ["finished"] * 3
    lrs = [row["optim.lr"] for row in _table(tmp_path / "twice")]
    extra = [row.get("augment.preset", row.get("augment.rotate_limit")) for row in _table(tmp_path / "twice")]
    assert len(set(zip(lrs, extra, strict=True))) == 3  # no point proposed twice
    engine = [json.loads((tmp_path / s / "engine.json").read_text()) for s in ("once", "twice")]
    assert engine[0]["rng"] == engine[1]["rng"] and engine[0]["seed"] == engine[1]["seed"] == 0
    for row in _table(tmp_path / "twice"):  # trials.csv says what each trial's config.yaml trained
        saved = flatten(load_saved_config(tmp_path / "twice" / "trials" / row["run_id"] / "config.yaml"))
        assert {k: saved[k] for k in SEARCHES[method]} == {k: yaml.safe_load(row[k]) for k in SEARCHES[method]}


def test_a_sweep_killed_inside_a_trial_resumes_it_with_its_parameters(tmp_path, monkeypatch):
    """kill -9 in trial 2: its row (state running, its parameters) and the engine state were saved before it
    trained, so the continuation trains trial 2 with the same parameters and trial 3 is what an
    uninterrupted sweep proposes."""
    import subprocess
    import sys

    import research.pipeline as pipeline_mod

    spec = _sweep_file(tmp_path, "random")
    script = (
        "import functools, research.pipeline as p\n"
        "from research.sweep import run_local_sweep\n"
        "from tests.test_sweep import fake_train\n"
        "p.train = functools.partial(fake_train, kill='t02')\n"
        f"run_local_sweep({str(spec)!r}, count=3, sweep_id='killed', root={str(tmp_path)!r}, seed=5)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin",
                          "HOME": str(tmp_path)}, capture_output=True, text=True, timeout=300)
    assert done.returncode == -9, done.stderr[-2000:]
    killed = _table(tmp_path / "killed")
    assert [r["state"] for r in killed] == ["finished", "running"]
    monkeypatch.setattr(pipeline_mod, "train", fake_train)
    run_local_sweep(spec, count=1, sweep_id="killed", root=tmp_path, seed=5)
    run_local_sweep(spec, count=3, sweep_id="whole", root=tmp_path, seed=5)
    after = _table(tmp_path / "killed")
    assert after[1]["optim.lr"] == killed[1]["optim.lr"] and after[1]["state"] == "finished"
    assert _proposals(tmp_path / "killed") == _proposals(tmp_path / "whole")
    saved = load_saved_config(tmp_path / "killed" / "trials" / after[1]["run_id"] / "config.yaml")
    assert saved.optim.lr == pytest.approx(float(after[1]["optim.lr"]), rel=1e-15)


def test_a_continuation_with_another_seed_is_refused(tmp_path, monkeypatch):
    import research.pipeline as pipeline_mod

    monkeypatch.setattr(pipeline_mod, "train", fake_train)
    spec = _sweep_file(tmp_path, "random")
    run_local_sweep(spec, count=1, sweep_id="s", root=tmp_path, seed=0)
    with pytest.raises(ConfigError, match=r"started with --seed 0; continue it with that --seed \(or none"):
        run_local_sweep(spec, count=1, sweep_id="s", root=tmp_path, seed=1)
    assert len(_table(tmp_path / "s")) == 1


def test_run_cap_caps_the_local_sweep_too(tmp_path, monkeypatch):
    import research.pipeline as pipeline_mod

    monkeypatch.setattr(pipeline_mod, "train", fake_train)
    spec = _write(tmp_path, {"method": "random", "run_cap": 2, "metric": {"name": "val/macro_f1", "goal": "maximize"},
                             "parameters": SEARCHES["random"]})
    run_local_sweep(spec, count=5, sweep_id="c", root=tmp_path, seed=0)
    run_local_sweep(spec, count=5, sweep_id="c", root=tmp_path)
    assert len(_table(tmp_path / "c")) == 2


def test_sync_runs_makes_a_local_sweep_a_wandb_sweep(tmp_path, monkeypatch):
    """After `wandb sync` of its trials (a fake server here), a local sweep becomes a W&B sweep of exactly
    those runs (wandb.sweep with prior_runs), in the sweep's project; a second sync-runs creates none."""
    import research.pipeline as pipeline_mod
    from research.tracking.wandb_log import WandbRun
    from research.tracking.wandb_offline import sync_offline_runs
    from tests.fake_wandb import FakeServer

    def train_with_a_record(cfg, **kwargs):
        summary = fake_train(cfg, **kwargs)
        run = WandbRun(run_id=cfg.run.name, run_dir=Path(summary.run_dir), config=flatten(cfg), mode="offline",
                       project=cfg.wandb.project, group=cfg.wandb.group)
        run.log_epoch({"epoch": 1, "val/macro_f1": summary.best["val/macro_f1"]})
        summary.wandb = run.record()
        run.finish()
        from research.tracking.runs import RunFolder

        RunFolder(summary.run_dir).write_summary(summary.to_dict())
        return summary

    monkeypatch.setattr(pipeline_mod, "train", train_with_a_record)
    spec = _write(tmp_path, {"method": "grid", "project": DEFAULT_PROJECT, "metric": {"name": "val/macro_f1", "goal": "maximize"},
                             "parameters": {"optim.lr": {"values": [1e-3, 1e-2]}}})
    run_local_sweep(spec, count=2, sweep_id="s", root=tmp_path / "sweeps", seed=0)
    server = FakeServer().install(monkeypatch)
    report = sync_offline_runs([tmp_path / "sweeps"])
    assert report.failed == 0, report.lines
    (sweep,) = server.sweeps
    assert sweep["prior_runs"] == ["s-t01", "s-t02"] and sweep["project"] == DEFAULT_PROJECT
    assert sweep["config"]["parameters"] == {"optim.lr": {"values": [1e-3, 1e-2]}}
    saved = json.loads((tmp_path / "sweeps" / "s" / "wandb_sweep.json").read_text())
    assert saved == {"id": "sweep1", "project": DEFAULT_PROJECT, "entity": None, "runs": ["s-t01", "s-t02"]}
    again = sync_offline_runs([tmp_path / "sweeps"])
    assert len(server.sweeps) == 1 and any("already W&B sweep fer-research/sweep1 of 2 trial(s)" in line for line in again.lines)
