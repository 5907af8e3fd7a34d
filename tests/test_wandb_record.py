"""What a user sees on the W&B dashboard, read back from the offline record itself (not from the calls
that made it): every image has content, the new-image table has its columns and rows, the summary is
the selected checkpoint's, the model artifact is there, and the folder still syncs after it moved."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from research.config import load_config
from research.data.demo import write_demo_new_images
from research.inference.predict import new_images_step
from research.tracking.runs import RunFolder
from research.tracking.wandb_offline import sync_offline_runs
from research.train import train
from tests.conftest import FAST
from tests.wandb_reader import read_offline_run

SUMMARY_KEYS = ("val/acc", "val/top2", "val/macro_f1", "val/weighted_f1", "val/loss", "val/ece")


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


def test_every_logged_image_has_content(run_with_images):
    record = read_offline_run(offline_folder(run_with_images))
    media = offline_folder(run_with_images) / "files"
    images = [media / f for f in record.files if f.endswith(".png")]
    assert len(images) >= 10  # curves, heatmaps, reliability, sheets, table cells
    for path in images:
        pixels = np.asarray(Image.open(path).convert("L"), dtype=float)
        assert pixels.max() - pixels.min() > 20, f"{path.name} is (nearly) constant"


def test_new_image_table_columns_rows_and_preprocessed_cells(run_with_images):
    # A table's cells live in its artifact (what the dashboard renders), staged in the run folder.
    record = read_offline_run(offline_folder(run_with_images))
    (artifact,) = [a for a in record.artifacts if "new_images" in a.name]
    files = {c.path: Path(c.local_path) for c in artifact.manifest.contents}
    table = json.loads(next(p for name, p in files.items() if name.endswith(".table.json")).read_text())
    assert table["columns"][:5] == ["image", "mode", "original", "face_crop", "preprocessed"]
    assert table["columns"][5:12] == ["anger", "disgust", "fear", "happiness", "neutral", "sadness", "surprise"]
    assert len(table["data"]) == 2 * 7  # 7 photos, raw and haar
    assert table["columns"][-1] == "gradcam"
    for name in ("original", "preprocessed", "gradcam"):
        column = table["columns"].index(name)
        for row in table["data"]:
            pixels = np.asarray(Image.open(files[row[column]["path"]]).convert("L"), dtype=float)
            assert pixels.max() - pixels.min() > 20, f"{name} cell of {row[0]} is (nearly) constant"


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


def test_model_artifact_is_best_weights_staged_in_the_run_folder(run_with_images):
    record = read_offline_run(offline_folder(run_with_images))
    (model,) = [a for a in record.artifacts if a.name == "model-rec"]
    (entry,) = [c for c in model.manifest.contents if c.path == "best.pt"]
    staged = Path(entry.local_path)
    assert staged.is_file() and run_with_images.resolve() in staged.parents
    assert staged.stat().st_size == (run_with_images / "best.pt").stat().st_size
    for artifact in record.artifacts:  # tables are artifacts too: all staged inside the run folder
        for content in artifact.manifest.contents:
            assert run_with_images.resolve() in Path(content.local_path).parents, content.local_path


def test_a_moved_run_folder_carries_everything_its_sync_needs(run_with_images, tmp_path, monkeypatch):
    moved = tmp_path / "elsewhere" / "rec"
    shutil.copytree(run_with_images, moved)
    shutil.rmtree(run_with_images / "wandb" / "staging-data")  # the old copy is gone, as on another machine
    try:
        new_home = tmp_path / "new-home"
        monkeypatch.setenv("HOME", str(new_home))
        assert sync_offline_runs([moved], ["--dry-run"]) == 0
        record = read_offline_run(offline_folder(moved))
        for artifact in record.artifacts:
            for content in artifact.manifest.contents:
                assert Path(content.local_path).is_file(), content.local_path
                assert moved.resolve() in Path(content.local_path).parents
        assert len(record.history) >= 3 and record.summary["val/acc"] is not None  # the rewritten log still reads
        out = subprocess.run(
            [str(Path(sys.executable).with_name("wandb")), "sync", "--dry-run", str(offline_folder(moved))],
            capture_output=True, text=True, timeout=120,
        )
        assert out.returncode == 0 and "Would sync 1 run" in out.stdout + out.stderr
    finally:
        shutil.copytree(moved / "wandb" / "staging-data", run_with_images / "wandb" / "staging-data")


def test_the_record_log_codec_round_trips_byte_for_byte(run_with_images, tmp_path):
    from research.tracking.wandb_offline import read_record_log, write_record_log

    original = next(offline_folder(run_with_images).glob("run-*.wandb"))
    header, raw = read_record_log(original)
    assert len(raw) > 20 and max(map(len, raw)) > 0
    copy = tmp_path / original.name
    write_record_log(copy, header, raw)
    assert copy.read_bytes() == original.read_bytes()  # same blocks, fragments and crc32s as W&B wrote
