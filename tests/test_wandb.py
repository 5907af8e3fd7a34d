"""W&B tracking without network: offline files, auto mode, disabled mode, online failure fallback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from research.config import load_config
from research.tracking import wandb_log
from research.tracking.uploads import PendingUploads, TableValue, find_uploads
from research.train import train
from tests.conftest import FAST
from tests.wandb_reader import read_offline_run


def offline_record(run_dir: Path) -> tuple[Path, bytes]:
    runs = list((run_dir / "wandb").glob("offline-run-*"))
    assert len(runs) == 1, runs
    return runs[0], next(runs[0].glob("run-*.wandb")).read_bytes()


@pytest.fixture(scope="module")
def offline_run(tmp_path_factory, tiny_dataset) -> Path:
    runs = tmp_path_factory.mktemp("wandb_runs")
    cfg = load_config(None, [*FAST, f"data.root={tiny_dataset}", f"run.dir={runs}", "run.name=off", "wandb.mode=offline", "train.epochs=2"])
    return Path(train(cfg).run_dir)


def test_offline_run_holds_every_logged_key(offline_run):
    folder, _ = offline_record(offline_run)
    record = read_offline_run(folder)
    logged = {key for row in record.history for key in row} | set(record.summary) | set(record.config)
    for key in ("train/loss", "train/acc", "train/top2", "train/macro_f1", "val/loss", "val/nll", "val/acc", "val/top2",
                "val/macro_f1", "val/weighted_f1", "val/ece", "epoch_seconds", "lr", "lr/all", "optim.lr", "data.root",
                "best/val/macro_f1", "latency_ms_per_image"):
        assert key in logged, key
    media = folder / "files" / "media"
    assert list(media.rglob("confusion_counts*.png")) and list(media.rglob("confusion_normalized*.png"))
    # what W&B would record by absolute staged paths waits in the upload list for sync-runs
    (uploads,) = find_uploads([offline_run])
    items = PendingUploads.open(uploads).items
    assert {k for i in items if i["kind"] == "log" for k in i["data"]} == {"val/confusion_matrix", "val/classification_report"}
    assert [i["name"] for i in items if i["kind"] == "artifact"] == ["model-off"]  # the best checkpoint


def test_wandb_sync_accepts_offline_run(offline_run):
    folder, _ = offline_record(offline_run)
    wandb_cli = Path(sys.executable).with_name("wandb")
    out = subprocess.run([str(wandb_cli), "sync", "--dry-run", str(folder)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "Would sync 1 run" in out.stdout + out.stderr


def test_summary_records_wandb_mode_and_sync_dir(offline_run):
    import json

    summary = json.loads((offline_run / "summary.json").read_text())
    assert summary["wandb"]["mode"] == "offline" and "offline-run-" in summary["wandb"]["offline_dir"]
    folder, _ = offline_record(offline_run)
    assert summary["wandb"]["id"] == read_offline_run(folder).run_id == "off"
    assert summary["wandb"]["project"] == read_offline_run(folder).project == "fer-research"


def test_auto_without_credentials_goes_offline(monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    assert not wandb_log.has_credentials()
    assert wandb_log.resolve_mode("auto") == "offline"
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    assert wandb_log.resolve_mode("auto") == "online"
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert wandb_log.resolve_mode("online") == "disabled"


def test_disabled_writes_nothing(tmp_path, tiny_dataset):
    summary = train(load_config(None, [*FAST, f"data.root={tiny_dataset}", f"run.dir={tmp_path}", "wandb.mode=disabled"]))
    assert not (Path(summary.run_dir) / "wandb").exists()
    assert summary.wandb["mode"] == "disabled"


def test_online_failure_falls_back_to_offline(tmp_path, monkeypatch, caplog):
    import wandb

    real_init = wandb.init
    monkeypatch.setenv("WANDB_API_KEY", "0" * 40)

    def init(*args, mode=None, **kwargs):
        if mode == "online":
            raise wandb.errors.CommError("network unreachable")
        return real_init(*args, mode=mode, **kwargs)

    monkeypatch.setattr(wandb, "init", init)
    run = wandb_log.WandbRun(run_id="fallback", run_dir=tmp_path, config={"optim.lr": 0.1}, mode="online")
    assert run.mode == "offline" and run.enabled
    run.log_epoch({"epoch": 1, "train/loss": 1.0})
    run.finish()
    (folder,) = (tmp_path / "wandb").glob("offline-run-*")
    assert [row["train/loss"] for row in read_offline_run(folder).history] == [1.0]
    assert "W&B online start failed after 0." in caplog.text and "network unreachable" in caplog.text


def test_a_sweep_that_files_the_run_elsewhere_is_said(tmp_path, monkeypatch, caplog):
    """Inside a sweep W&B ignores wandb.project (and says so in a warning that silent=True hides): the
    project the run really went to (here the agent's WANDB_PROJECT) is logged and recorded."""
    monkeypatch.setenv("WANDB_SWEEP_ID", "abc")
    monkeypatch.setenv("WANDB_PROJECT", "the-sweeps-project")
    run = wandb_log.WandbRun(run_id="t", run_dir=tmp_path, config={}, mode="offline", project="fer-research")
    recorded = run.record()
    run.finish()
    assert "W&B files this run in project 'the-sweeps-project', not wandb.project='fer-research'" in caplog.text
    assert "report --wandb ENTITY/the-sweeps-project" in caplog.text and recorded["project"] == "the-sweeps-project"


def test_prediction_table_logging(tmp_path):
    import numpy as np

    run = wandb_log.WandbRun(run_id="table", run_dir=tmp_path, config={}, mode="offline")
    img = np.zeros((8, 8, 3), np.uint8)
    names = ["anger", "happiness"]
    run.log_predictions(
        [{"image": "a.png", "mode": "raw", "original": img, "crop": None, "preprocessed": img[..., 0] / 255.0,
          "scores": {"anger": 0.3, "happiness": 0.7}, "winner": "happiness", "true": "anger", "correct": False, "face_found": None}],
        names,
    )
    run.finish()
    (uploads,) = find_uploads([tmp_path])
    table = PendingUploads.open(uploads).decode(PendingUploads.open(uploads).items[0])["predictions/new_images"]
    assert isinstance(table, TableValue) and table.columns[-4:] == ["winner", "true", "correct", "face_found"]
    assert table.rows[0][:2] == ["a.png", "raw"] and table.rows[0][5:7] == [0.3, 0.7]


def test_the_installed_wandb_is_in_the_tested_range():
    """pyproject.toml bounds wandb to the series the code is tested with (it reads W&B's run records, starts
    runs with reinit="finish_previous" and drives `wandb sync`); another version fails here, first."""
    import tomllib
    from importlib.metadata import version

    from packaging.requirements import Requirement

    pyproject = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())
    (declared,) = [Requirement(d) for d in pyproject["project"]["dependencies"] if Requirement(d).name == "wandb"]
    installed = version("wandb")
    assert declared.specifier and "<" in str(declared.specifier), f"wandb has no upper bound in pyproject.toml: {declared}"
    assert declared.specifier.contains(installed, prereleases=True), (
        f"wandb {installed} is installed, but pyproject.toml declares {declared.specifier}, the range the code is "
        "tested with. To try another W&B, follow the README's \"A newer W&B\" steps (raise the bound, poetry lock, "
        "run the W&B tests) instead of installing it over the locked one."
    )
