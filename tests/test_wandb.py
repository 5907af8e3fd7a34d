"""W&B tracking without network: offline files, auto mode, disabled mode, online failure fallback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from research.config import load_config
from research.tracking import wandb_log
from research.train import train
from tests.conftest import FAST


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
    folder, data = offline_record(offline_run)
    for key in ("train/loss", "train/acc", "train/top2", "train/macro_f1", "val/loss", "val/acc", "val/top2",
                "val/macro_f1", "val/weighted_f1", "val/ece", "epoch_seconds", "lr", "optim.lr", "data.root",
                "val/confusion_matrix", "val/classification_report", "best/val/macro_f1", "latency_ms_per_image"):
        assert key.encode() in data, key
    media = folder / "files" / "media"
    assert list(media.rglob("confusion_counts*.png")) and list(media.rglob("confusion_normalized*.png"))
    assert list(media.rglob("classification_report*.table.json"))
    assert b"model-off" in data  # the best checkpoint as a model artifact


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


def test_online_failure_falls_back_to_offline(tmp_path, monkeypatch):
    import wandb

    real_init = wandb.init

    def init(*args, mode=None, **kwargs):
        if mode == "online":
            raise wandb.errors.CommError("network unreachable")
        return real_init(*args, mode=mode, **kwargs)

    monkeypatch.setattr(wandb, "init", init)
    run = wandb_log.WandbRun(run_id="fallback", run_dir=tmp_path, config={"optim.lr": 0.1}, mode="online")
    assert run.mode == "offline" and run.enabled
    run.log_epoch({"epoch": 1, "train/loss": 1.0})
    run.finish()
    assert list((tmp_path / "wandb").glob("offline-run-*"))


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
    assert list(tmp_path.rglob("new_images*.table.json"))
