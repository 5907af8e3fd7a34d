"""What a user sees on the W&B dashboard, read back from the offline record and from what ``sync-runs``
uploads (against a fake server, tests/fake_wandb.py), not from the calls that made them: every image has
content, the new-image table has its columns, rows and full-size cells, the summary is the selected
checkpoint's, the model artifact is the best weights, and a moved run folder uploads everything once."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from research.config import load_config
from research.data.demo import write_demo_new_images
from research.inference.explain import DISPLAY_MIN
from research.inference.predict import new_images_step
from research.tracking.runs import RunFolder
from research.tracking.uploads import ImageValue, PendingUploads, TableValue, find_uploads
from research.tracking.wandb_offline import sync_offline_runs
from research.train import train
from tests.conftest import FAST
from tests.fake_wandb import FakeServer
from tests.wandb_reader import read_offline_run

SUMMARY_KEYS = ("val/acc", "val/top2", "val/macro_f1", "val/weighted_f1", "val/loss", "val/nll", "val/ece")


@pytest.fixture(scope="module")
def run_with_images(tmp_path_factory, tiny_dataset) -> Path:
    root = tmp_path_factory.mktemp("wandb_record")
    photos = root / "photos"
    write_demo_new_images(photos, per_class=1)
    cfg = load_config(None, [*FAST, f"data.root={tiny_dataset}", f"run.dir={root / 'runs'}", "run.name=rec",
                             "wandb.mode=offline", "train.epochs=3", "optim.lr=3e-2"])
    return Path(train(cfg, after_fit=new_images_step(photos)).run_dir)


def offline_folder(run_dir: Path) -> Path:
    (folder,) = (run_dir / "wandb").glob("offline-run-*")
    return folder


def upload_list(run_dir: Path) -> PendingUploads:
    (folder,) = find_uploads([run_dir])
    return PendingUploads.open(folder)


def logged_value(uploads: PendingUploads, key: str):
    (item,) = [i for i in uploads.items if i["kind"] == "log" and key in i["data"]]
    return uploads.decode(item)[key]


def assert_has_content(pixels: np.ndarray, what: str) -> None:
    pixels = np.asarray(pixels, dtype=float)
    assert pixels.max() - pixels.min() > 20, f"{what} is (nearly) constant"


def test_every_logged_image_has_content(run_with_images):
    record = read_offline_run(offline_folder(run_with_images))
    media = offline_folder(run_with_images) / "files"
    images = [media / f for f in record.files if f.endswith(".png")]
    assert len(images) >= 8  # curves, heatmaps, reliability, sheets
    for path in images:
        assert_has_content(Image.open(path).convert("L"), path.name)


def test_the_offline_record_carries_no_absolute_path_and_no_artifact(run_with_images):
    """What W&B would record by absolute staged paths (tables, charts, artifacts) is in the upload list."""
    record = read_offline_run(offline_folder(run_with_images))
    assert record.artifacts == [] and not (run_with_images / "wandb" / "staging-data").exists()
    kept = {key for item in upload_list(run_with_images).items if item["kind"] == "log" for key in item["data"]}
    assert {"val/confusion_matrix", "val/classification_report", "predictions/new_images"} <= kept


def test_new_image_table_columns_rows_and_full_size_cells(run_with_images):
    table = logged_value(upload_list(run_with_images), "predictions/new_images")
    assert isinstance(table, TableValue)
    assert table.columns[:5] == ["image", "mode", "original", "face_crop", "preprocessed"]
    assert table.columns[5:12] == ["anger", "disgust", "fear", "happiness", "neutral", "sadness", "surprise"]
    assert len(table.rows) == 2 * 7  # 7 photos, raw and haar
    assert table.columns[-1] == "gradcam"
    for name in ("original", "preprocessed", "gradcam"):
        column = table.columns.index(name)
        for row in table.rows:
            cell = row[column]
            assert isinstance(cell, ImageValue) and cell.path.is_file()
            with Image.open(cell.path) as image:
                pixels = np.asarray(image.convert("L"))
            assert_has_content(pixels, f"{name} cell of {row[0]}")
            if name != "original":  # the model input (32 px here) at the size predict writes it to disk
                assert min(pixels.shape) >= DISPLAY_MIN, (name, pixels.shape)


def test_summary_is_the_selected_checkpoint(run_with_images):
    record = read_offline_run(offline_folder(run_with_images))
    summary = RunFolder(run_with_images).read_summary()
    history = RunFolder(run_with_images).read_history()
    assert len(record.history) >= 3 and [r["epoch"] for r in record.history if "val/acc" in r] == [1, 2, 3]
    for key in SUMMARY_KEYS:
        assert record.summary[key] == pytest.approx(summary["best"][key]), key
        assert record.summary[f"best/{key}"] == pytest.approx(summary["best"][key]), key
    # the ECE shown is the selected epoch's, not the best over epochs
    selected = next(r for r in history if r["epoch"] == summary["best_epoch"])
    assert record.summary["val/acc"] == pytest.approx(selected["val/acc"])
    assert record.summary["best_epoch"] == summary["best_epoch"]
    assert "lr/all" in record.history[0] and record.history[0]["lr/all"] == record.history[0]["lr"]


def test_model_artifact_is_the_best_weights_of_the_run_folder(run_with_images):
    uploads = upload_list(run_with_images)
    (item,) = [i for i in uploads.items if i["kind"] == "artifact"]
    artifact = uploads.decode(item)
    assert (artifact.name, artifact.type, artifact.aliases) == ("model-rec", "model", ["best", "latest"])
    (weights,) = artifact.files
    assert weights.resolve() == (run_with_images / "best.pt").resolve()
    assert artifact.metadata["val/macro_f1"] == RunFolder(run_with_images).read_summary()["best"]["val/macro_f1"]


def test_a_moved_run_folder_uploads_everything_once(run_with_images, tmp_path, monkeypatch):
    """Copied elsewhere (the original gone, as on another machine), the folder syncs: the record through
    `wandb sync`, then the table, the charts and the model artifact into the same run; a second sync-runs
    uploads nothing."""
    moved = tmp_path / "elsewhere" / "rec"
    shutil.copytree(run_with_images, moved)
    server = FakeServer().install(monkeypatch)
    report = sync_offline_runs([moved])
    assert report.failed == 0 and report.error is None, report.lines
    summary = RunFolder(moved).read_summary()
    run_id = summary["wandb"]["id"]
    assert server.runs[run_id].summary["val/acc"] == pytest.approx(summary["best"]["val/acc"])
    logged = server.logged(run_id)
    table = logged["predictions/new_images"]
    assert table.columns[-1] == "gradcam" and len(table.data) == 14
    preprocessed = table.data[0][table.columns.index("preprocessed")]
    assert min(preprocessed.image.size) >= DISPLAY_MIN
    assert_has_content(np.asarray(preprocessed.image.convert("L")), "uploaded preprocessed cell")
    assert {"val/confusion_matrix", "val/classification_report"} <= set(logged)
    ((artifact, aliases),) = [a for s in server.sessions for a in s.artifacts]
    assert artifact.name == "model-rec" and aliases == ["best", "latest"]
    with (moved / "best.pt").open("rb") as fh:
        assert artifact.manifest.entries["best.pt"].size == len(fh.read())
    sessions = len(server.sessions)
    again = sync_offline_runs([moved])
    assert len(server.sessions) == sessions and len(server.sync_calls) == 1  # nothing twice
    assert all("already" in line for line in again.lines), again.lines


def test_real_wandb_sync_accepts_the_offline_record(run_with_images):
    out = subprocess.run(
        [str(Path(sys.executable).with_name("wandb")), "sync", "--dry-run", str(offline_folder(run_with_images))],
        capture_output=True, text=True, timeout=120,
    )
    assert out.returncode == 0 and "Would sync 1 run" in out.stdout + out.stderr
