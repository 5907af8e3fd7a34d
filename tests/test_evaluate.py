"""evaluate: cross-dataset (English-named set, Spanish-trained model), missing classes, Haar, TTA, errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from research.data.datasets import DatasetLayoutError
from research.inference.evaluate import evaluate_run, find_labelled_images
from research.inference.loaded import load_run
from tests.conftest import SHARED_DATA, face_photo


def test_english_set_scored_by_spanish_trained_model(trained_run, tiny_english_dataset, tmp_path):
    loaded = load_run(trained_run)
    result = evaluate_run(loaded, tiny_english_dataset, split="validation", out=tmp_path / "e")
    m = json.loads((tmp_path / "e" / "metrics.json").read_text())
    assert m["images"] == result.metrics["images"] > 0 and m["classes_absent"] == []
    for key in ("acc", "top2", "macro_f1", "weighted_f1", "nll", "ece", "images_per_s", "per_class"):
        assert key in m
    assert "loss" not in m  # the training criterion belongs to the training set; nll is plain cross-entropy
    assert (tmp_path / "e" / "confusion_counts.png").exists() and (tmp_path / "e" / "classification_report.txt").exists()


def test_set_missing_a_class(trained_run, tiny_english_dataset, tmp_path):
    subset = tmp_path / "subset"
    shutil.copytree(tiny_english_dataset / "validation", subset)
    shutil.rmtree(subset / "neutral")
    result = evaluate_run(load_run(trained_run), subset, out=tmp_path / "s")
    assert result.metrics["classes_absent"] == ["neutral"]
    assert "neutral" not in result.metrics["per_class"]
    assert sum(result.metrics["confusion_counts"][4]) == 0  # no neutral row


def test_split_folder_needs_split(trained_run, tiny_english_dataset):
    with pytest.raises(DatasetLayoutError, match="--split"):
        find_labelled_images(tiny_english_dataset)


def test_bad_data_dirs(tmp_path):
    with pytest.raises(DatasetLayoutError):
        find_labelled_images(tmp_path / "missing")
    (tmp_path / "flat").mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "flat" / "IMG_1.png")
    with pytest.raises(DatasetLayoutError, match="no labelled images"):
        find_labelled_images(tmp_path / "flat")


def test_haar_counts_faceless_images(trained_run, tmp_path):
    folder = tmp_path / "faces"
    folder.mkdir()
    Image.fromarray(face_photo()).save(folder / "happy_1.png")
    Image.fromarray(np.full((64, 64, 3), 90, np.uint8)).save(folder / "sad_1.png")
    (folder / "anger_1.jpg").write_bytes(b"not a jpeg")
    result = evaluate_run(load_run(trained_run), folder, face="haar", out=tmp_path / "h")
    assert result.metrics["images"] == 2 and result.metrics["no_face"] == 1
    assert len(result.metrics["failed_files"]) == 1


def test_hflip_tta_changes_nothing_for_symmetric_images(trained_run, tmp_path):
    folder = tmp_path / "sym"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for k in range(4):
        half = rng.integers(0, 255, (48, 24, 3), dtype=np.uint8)
        Image.fromarray(np.concatenate([half, half[:, ::-1]], axis=1)).save(folder / f"fear_{k}.png")
    loaded = load_run(trained_run)
    plain = evaluate_run(loaded, folder, out=tmp_path / "a")
    tta = evaluate_run(loaded, folder, tta="hflip", out=tmp_path / "b")
    assert tta.metrics["nll"] == pytest.approx(plain.metrics["nll"], abs=1e-5)
    assert torch.tensor(tta.metrics["confusion_counts"]).equal(torch.tensor(plain.metrics["confusion_counts"]))


def test_evaluate_cli_writes_into_run(trained_run, tiny_english_dataset):
    from research.cli import evaluate_main

    with pytest.raises(SystemExit) as e:
        evaluate_main(["--run", str(trained_run), str(tiny_english_dataset), "--split", "validation", "--wandb", "disabled"])
    assert e.value.code == 0
    assert (trained_run / "evaluations" / f"{Path(tiny_english_dataset).name}-validation" / "metrics.json").exists()


@pytest.mark.skipif(not (SHARED_DATA / "new-images").is_dir(), reason="../shared/data/new-images absent")
def test_real_new_images_labels_from_names(trained_run, tmp_path):
    result = evaluate_run(load_run(trained_run), SHARED_DATA / "new-images", face="haar", out=tmp_path / "n")
    assert result.metrics["images"] == 14
