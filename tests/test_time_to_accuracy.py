"""Smoke test of benchmarks/time_to_accuracy.py: both sides train one epoch on the same tiny split."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest

from tests.conftest import load_benchmark


@pytest.fixture
def train_only(tmp_path, tiny_dataset) -> Path:
    root = tmp_path / "train_only"
    shutil.copytree(tiny_dataset / "train", root / "train")
    return root


@pytest.mark.parametrize("order", ["project,baseline", "baseline,project"])
def test_both_sides_train_one_epoch_on_the_same_split(train_only, tmp_path, capsys, order):
    out = tmp_path / "tta.json"
    argv = [
        "--data", str(train_only), "--val-fraction", "0.25", "--epochs", "1", "--seed", "1", "--order", order,
        "--json", str(out), "--run-dir", str(tmp_path / "runs"), "--preset", "scratch_cnn",
        "--overrides", "data.image_size=16", "data.batch_size=16", "train.threads=1", "wandb.mode=disabled",
    ]
    assert load_benchmark("time_to_accuracy").main(argv) == 0

    results = json.loads(out.read_text())
    assert results["split"]["identical_on_both_sides"]
    for side in ("project", "baseline"):
        curve = results[side]["curve"]
        assert [e["epoch"] for e in curve] == [1]
        assert all(math.isfinite(e[k]) for e in curve for k in ("val_acc", "val_macro_f1", "train_loss", "wall_s", "cpu_s"))
        assert 0 <= curve[0]["val_acc"] <= 1 and 0 <= curve[0]["val_macro_f1"] <= 1
        assert results[side]["val_images"] == results["split"]["val_files"] > 0
        assert results["summary"][side]["best_acc"] == curve[0]["val_acc"]
    assert results["project"]["train_images"] == results["baseline"]["train_images"]
    assert results["project"]["device"] == results["baseline"]["device"] == "cpu"  # both sides on the run's device
    assert results["machine"]["nproc"] >= 1 and len(results["machine"]["loadavg_end"]) == 3

    text = capsys.readouterr().out
    assert "| project |" in text and "| baseline |" in text and "baseline / project" in text
    assert "training on cpu (project) and cpu (baseline)" in text


def test_budgets_per_side_and_stop_at_target():
    """--baseline-budget-s gives the baseline its own wall budget; --stop-at-target ends a side at the target."""
    import argparse

    tta = load_benchmark("time_to_accuracy")
    args = argparse.Namespace(budget_s=1800.0, baseline_budget_s=900.0, stop_at_target=False, target_acc=0.6)
    assert tta.side_budget(args, "project") == 1800.0 and tta.side_budget(args, "baseline") == 900.0
    assert not tta.over_budget(args, 1000.0, "project", 0.7)
    assert tta.over_budget(args, 1000.0, "baseline", 0.1)
    args.stop_at_target = True
    assert tta.over_budget(args, 10.0, "project", 0.6) and not tta.over_budget(args, 10.0, "project", 0.59)
    args.baseline_budget_s = None
    assert tta.side_budget(args, "baseline") == 1800.0
