"""A validation split for train-only datasets (FER2013's Training split, RAF-DB): stratified, seeded,
recorded in the run folder and reused on resume and in `evaluate`."""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

import pytest

from research.cli import evaluate_main, train_main
from research.data.datasets import load_datasets
from tests.conftest import FAST, interrupt_after_epoch


@pytest.fixture
def train_only(tmp_path, tiny_dataset) -> Path:
    root = tmp_path / "train_only"
    shutil.copytree(tiny_dataset / "train", root / "train")
    return root


def cli(main, argv) -> int:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    return exit_info.value.code


def test_carved_split_is_stratified_seeded_and_disjoint(train_only):
    a = load_datasets(train_only, val_fraction=0.25, val_split_seed=3, keep_size=32)
    b = load_datasets(train_only, val_fraction=0.25, val_split_seed=3, keep_size=32)
    c = load_datasets(train_only, val_fraction=0.25, val_split_seed=4, keep_size=32)
    assert a.val.names == b.val.names and a.val.names != c.val.names
    assert not set(a.val.names) & set(a.train.names)
    total = Counter(a.train.targets) + Counter(a.val.targets)
    for label, n in total.items():  # every class with 2+ images is in both splits, about a quarter in validation
        assert 1 <= Counter(a.val.targets)[label] <= max(1, round(0.25 * n)) and Counter(a.train.targets)[label] >= 1


def test_a_train_only_dataset_asks_for_a_split(train_only, tmp_path, caplog):
    assert cli(train_main, [*FAST, f"data.root={train_only}", f"run.dir={tmp_path / 'runs'}"]) == 2
    assert "data.val_fraction=0.1" in caplog.text


def test_a_validation_folder_and_a_fraction_are_not_both_used(tiny_dataset, tmp_path, caplog):
    assert cli(train_main, [*FAST, f"data.root={tiny_dataset}", "data.val_fraction=0.2", f"run.dir={tmp_path / 'runs'}"]) == 2
    assert "has a validation folder" in caplog.text and not (tmp_path / "runs").exists()


def test_the_split_is_recorded_and_reused_on_resume_and_in_evaluate(train_only, tmp_path, monkeypatch):
    args = [*FAST, f"data.root={train_only}", "data.val_fraction=0.25", f"run.dir={tmp_path}", "run.name=v", "train.epochs=2"]
    stop = interrupt_after_epoch(monkeypatch, 1)
    assert cli(train_main, args) == 130
    stop()
    run = tmp_path / "v"
    recorded = json.loads((run / "val_split.json").read_text())
    assert recorded["fraction"] == 0.25 and recorded["seed"] == 0 and len(recorded["files"]) == recorded["images"]
    # a new image in train/ must not change the validation set of the resumed run
    first = sorted((train_only / "train").iterdir())[0]
    shutil.copy(next(first.iterdir()), first / "zz_added_later.png")
    assert cli(train_main, [f"run.resume={run}"]) == 0
    assert json.loads((run / "val_split.json").read_text())["files"] == recorded["files"]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["dataset"]["val_images"] == len(recorded["files"])
    assert summary["dataset"]["val_split"]["fraction"] == 0.25
    assert cli(evaluate_main, ["--run", str(run), str(train_only), "--split", "validation", "--out", str(tmp_path / "e"), "--wandb", "disabled"]) == 0
    metrics = json.loads((tmp_path / "e" / "metrics.json").read_text())
    assert metrics["images"] == len(recorded["files"])
    assert metrics["acc"] == pytest.approx(summary["best"]["val/acc"])
