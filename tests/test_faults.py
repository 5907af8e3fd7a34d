"""The fault catalogue: every way a user can hurt the program gets a clear error (exit code 2, one
message naming the file or key and the fix) or a counted skip, and nothing finished is lost.

Each case runs the real command (the console script's ``main``) and asserts the exit code, the
message and what is left on disk.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from research.cli import (
    evaluate_main,
    export_main,
    pipeline_main,
    predict_main,
    report_main,
    sweep_main,
    sync_runs_main,
    train_main,
)
from research.tracking.runs import RunFolder
from research.tracking.uploads import PendingUploads, find_uploads
from research.tracking.wandb_offline import find_records
from tests.conftest import FAST, interrupt_after_epoch
from tests.fake_wandb import FakeServer
from tests.wandb_reader import read_offline_run


def cli(main, argv: list[str]) -> int:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    return exit_info.value.code


def train_args(data: Path, runs: Path, *extra: str) -> list[str]:
    return [*FAST, f"data.root={data}", f"run.dir={runs}", *extra]


def temp_files(folder: Path) -> list[Path]:
    return [p for p in folder.rglob(".*.tmp*")] if folder.exists() else []


def copy_dataset(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


# --- 7, 8, 14, 10: bad values and inputs fail before any folder is made -------------------------
@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("augment.hflip_p=2", r"augment.hflip_p=2.0 is out of range: a probability in \[0, 1\]"),
        ("data.demo_scale=0", r"data.demo_scale=0.0 is out of range: allowed a size multiplier in \(0, 100\]"),
        ("optim.weight_decay=-1", r"optim.weight_decay=-1.0 is out of range: allowed >= 0"),
        ("train.device=cuda", r"train.device='cuda' but CUDA is not available here; use train.device=auto or cpu"),
        ("faces.scale_factor=1", r"faces.scale_factor=1.0 is out of range"),
        ("model.name=resnet1", r"model.name='resnet1' is not a registered model; known: .*resnet18"),
        ("run.name=a/b", r"run.name='a/b' must be a folder name"),
        ("optim.backbone_lr_mult=0", r"optim.backbone_lr_mult=0.0 is out of range: allowed a fraction of optim.lr in \(0, 1\]"),
        ("train.tta=vflip", r"train.tta='vflip' is not one of none, hflip"),
        ("train.ema_decay=1", r"train.ema_decay=1.0 is out of range: allowed in \[0, 1\) \(0 = off"),
        ("train.cutmix_alpha=-1", r"train.cutmix_alpha=-1.0 is out of range: allowed a Beta shape in \[0, 10\]"),
        ("optim.layer_decay=1.5", r"optim.layer_decay=1.5 is out of range: allowed a factor per layer group in \(0, 1\]"),
        ("model.init_from=no-such-run", r"model.init_from=no-such-run: no-such-run not found; give a finished run folder"),
    ],
)
def test_out_of_range_values_fail_at_load_with_nothing_left(override, message, tmp_path, tiny_dataset, caplog, monkeypatch):
    if override.startswith("train.device") and torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    assert cli(train_main, train_args(tiny_dataset, tmp_path / "runs", override)) == 2
    assert pytest.approx(0) == len(list((tmp_path).glob("runs/*")))
    assert any(r.levelname == "ERROR" for r in caplog.records)
    import re

    assert re.search(message, caplog.text), caplog.text


def test_config_yaml_top_level_not_a_mapping(tmp_path, caplog):
    bad = tmp_path / "list.yaml"
    bad.write_text("- data\n- model\n")
    assert cli(train_main, ["--config", str(bad)]) == 2
    assert f"{bad}: the top level must be a mapping of sections" in caplog.text


def test_config_yaml_syntax_error_names_the_line(tmp_path, caplog):
    bad = tmp_path / "broken.yaml"
    bad.write_text("optim:\n  lr: [0.1\n")
    assert cli(train_main, ["--config", str(bad)]) == 2
    assert str(bad) in caplog.text and "line 3" in caplog.text


def test_a_file_as_data_root(tmp_path, caplog):
    archive = tmp_path / "dataset.zip"
    archive.write_bytes(b"PK")
    assert cli(train_main, train_args(archive, tmp_path / "runs")) == 2
    assert "is a file; pass the dataset folder" in caplog.text and "fetch-data --zip" in caplog.text
    assert not (tmp_path / "runs").exists()


def test_pipeline_with_a_missing_data_folder_does_no_work(tmp_path, caplog, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert cli(pipeline_main, ["--data-dir", "nowhere", "--runs-dir", "runs/study"]) == 2
    assert "data.root=nowhere does not exist" in caplog.text
    assert "Traceback" not in caplog.text and "Downloading" not in caplog.text
    assert not (tmp_path / "runs").exists() and not (tmp_path / "reports").exists()


# --- 8, 9: sweep files and values ---------------------------------------------------------------
SWEEP = """\
method: grid
metric: {{name: val/macro_f1, goal: maximize}}
parameters:
  optim.lr: {{values: {values}}}
command: [python, -m, research, train, --config, scratch_cnn, "${{args}}"]
"""


def test_malformed_sweep_yaml_names_file_and_line(tmp_path, caplog):
    bad = tmp_path / "sweep.yaml"
    bad.write_text("method: grid\nparameters:\n  optim.lr: {values: [0.1, 0.2\n")
    assert cli(sweep_main, [str(bad)]) == 2
    assert f"{bad} line" in caplog.text and "not valid YAML" in caplog.text


def test_sweep_values_of_the_wrong_type_fail_before_the_first_trial(tmp_path, tiny_dataset, caplog):
    bad = tmp_path / "sweep.yaml"
    bad.write_text(SWEEP.format(values="[0.01, fast]"))
    code = cli(sweep_main, [str(bad), "--sweep-id", "s", *train_args(tiny_dataset, tmp_path / "runs")])
    assert code == 2 and "sweep parameter optim.lr value 'fast'" in caplog.text
    assert not (Path("runs/sweeps") / "s").exists()


@pytest.mark.parametrize("count", ["0", "-3"])
def test_sweep_count_must_be_positive(count, tmp_path, capsys):
    good = tmp_path / "sweep.yaml"
    good.write_text(SWEEP.format(values="[0.01]"))
    assert cli(sweep_main, [str(good), "--count", count]) == 2
    assert "--count: must be >= 1" in capsys.readouterr().err


# --- 3: running the same local sweep again continues it --------------------------------------------
def test_rerunning_a_sweep_keeps_finished_trials_and_reruns_the_interrupted_one(tmp_path, tiny_dataset, monkeypatch):
    import research.sweep as sweep_mod

    spec = tmp_path / "grid.yaml"
    spec.write_text(SWEEP.format(values="[0.01, 0.003, 0.001]"))
    root = tmp_path / "sweeps"
    argv = [str(spec), "--sweep-id", "g", "--count", "2", *FAST, f"data.root={tiny_dataset}"]
    monkeypatch.setattr(sweep_mod, "run_local_sweep", _rooted(sweep_mod.run_local_sweep, root))
    import research.pipeline as pipeline_mod

    real_train, calls = pipeline_mod.train, []

    def ctrl_c_in_trial_2(cfg, **kwargs):
        calls.append(cfg.run.name)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_train(cfg, **kwargs)

    monkeypatch.setattr(pipeline_mod, "train", ctrl_c_in_trial_2)
    assert cli(sweep_main, argv) == 130
    first = _trials(root / "g")
    assert [t["state"] for t in first] == ["finished", "interrupted"]
    finished_metric = first[0]["metric"]

    monkeypatch.setattr(pipeline_mod, "train", real_train)
    assert cli(sweep_main, argv) == 0
    again = _trials(root / "g")
    # trial 1 kept as it was, trial 2 rerun with the same lr, --count 2 new trials: the grid's third point, then exhausted
    assert [t["trial"] for t in again] == ["1", "2", "3"]
    assert again[0]["metric"] == finished_metric and again[0]["optim.lr"] == first[0]["optim.lr"]
    assert again[1]["state"] == "finished" and again[1]["optim.lr"] == first[1]["optim.lr"]
    assert sorted(float(t["optim.lr"]) for t in again) == [0.001, 0.003, 0.01]  # the grid never repeats a point
    assert all(t["state"] == "finished" for t in again)


def _rooted(run_local_sweep, root: Path):
    def wrapper(*args, **kwargs):
        return run_local_sweep(*args, root=root, **kwargs)

    return wrapper


def _trials(folder: Path) -> list[dict[str, str]]:
    with (folder / "trials.csv").open(newline="") as fh:
        return list(csv.DictReader(fh))


# --- 4: corrupt or truncated checkpoints ----------------------------------------------------------
def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 3])


def test_truncated_last_checkpoint_on_resume(tmp_path, tiny_dataset, caplog):
    assert cli(train_main, train_args(tiny_dataset, tmp_path, "run.name=r")) == 0
    truncate(tmp_path / "r" / "last.pt")
    assert cli(train_main, [f"run.resume={tmp_path / 'r'}"]) == 2
    assert f"{tmp_path / 'r' / 'last.pt'} is damaged or not a checkpoint" in caplog.text
    assert "start a new run" in caplog.text
    assert (tmp_path / "r" / "best.pt").exists() and (tmp_path / "r" / "summary.json").exists()


@pytest.mark.parametrize("command", ["predict", "evaluate"])
def test_truncated_best_checkpoint_in_predict_and_evaluate(command, trained_run, tmp_path, tiny_dataset, caplog):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    truncate(run / "best.pt")
    main, data = (predict_main, tiny_dataset / "validation") if command == "predict" else (evaluate_main, tiny_dataset)
    extra = ["--split", "validation"] if command == "evaluate" else []
    assert cli(main, ["--run", str(run), str(data), *extra, "--wandb", "disabled"]) == 2
    assert f"{run / 'best.pt'} is damaged or not a checkpoint" in caplog.text and "--checkpoint last" in caplog.text


# --- 5: disk full while writing a checkpoint --------------------------------------------------------
def test_disk_full_is_a_clear_error_with_no_temp_files_and_the_run_marked_failed(tmp_path, tiny_dataset, caplog, monkeypatch):
    real_save, saves = torch.save, []

    def full_disk(obj, path, *args, **kwargs):
        saves.append(path)
        if len(saves) >= 3:  # epoch 1's last.pt and best.pt fit; epoch 2's do not
            Path(path).write_bytes(b"partial")
            raise RuntimeError("[enforce fail at inline_container.cc:664] . PytorchStreamWriter failed writing file data/0: file write failed")
        return real_save(obj, path, *args, **kwargs)

    monkeypatch.setattr(torch, "save", full_disk)
    assert cli(train_main, train_args(tiny_dataset, tmp_path, "run.name=full", "train.epochs=2")) == 2
    run = tmp_path / "full"
    assert "cannot write" in caplog.text and "Free disk space" in caplog.text
    assert temp_files(run) == []
    assert RunFolder(run).read_summary()["status"] == "failed"
    assert torch.load(run / "last.pt", weights_only=True)["trainer"]["epoch"] == 1  # epoch 1 is intact


# --- 6: images over the decompression-bomb limit --------------------------------------------------
def test_huge_jpeg_is_decoded_downscaled_and_a_huge_png_is_skipped_and_reported(tmp_path, tiny_dataset, monkeypatch, caplog):
    data = copy_dataset(tiny_dataset, tmp_path / "data")
    noise = np.random.default_rng(0).integers(0, 255, (600, 600, 3), dtype=np.uint8)
    Image.fromarray(noise).save(data / "train" / "alegria" / "huge.jpg", quality=80)
    Image.fromarray(noise).save(data / "train" / "alegria" / "huge.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100_000)  # 600x600 is over twice the limit: a "bomb"
    assert cli(train_main, train_args(data, tmp_path / "runs", "run.name=b")) == 2
    assert "huge.png" in caplog.text and "decompression-bomb limit" in caplog.text
    caplog.clear()
    assert cli(train_main, train_args(data, tmp_path / "runs", "run.name=b", "data.bad_files=skip")) == 0
    skipped = RunFolder(tmp_path / "runs" / "b").read_summary()["dataset"]["skipped_files"]
    assert [Path(p).name for p in skipped] == ["huge.png"]  # the JPEG was read, downscaled on decode


def test_huge_jpeg_in_predict(trained_run, tmp_path, monkeypatch):
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.fromarray(np.full((1600, 1600, 3), 128, np.uint8)).save(photos / "anger_1.jpg")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1_100_000)  # 1600x1600 is over twice the limit; the panels are not
    assert cli(predict_main, ["--run", str(trained_run), str(photos), "--face", "raw", "--out", str(tmp_path / "o"), "--wandb", "disabled"]) == 0
    assert (tmp_path / "o" / "raw" / "predictions.json").exists()


# --- 11: a dangling symlink in a class folder ---------------------------------------------------------
def test_broken_symlink_is_reported_not_dropped(tmp_path, tiny_dataset, caplog):
    data = copy_dataset(tiny_dataset, tmp_path / "data")
    (data / "train" / "alegria" / "gone.png").symlink_to(tmp_path / "nowhere.png")
    assert cli(train_main, train_args(data, tmp_path / "runs", "run.name=s")) == 2
    assert "gone.png: broken symbolic link" in caplog.text
    assert cli(train_main, train_args(data, tmp_path / "runs", "run.name=s", "data.bad_files=skip")) == 0
    skipped = RunFolder(tmp_path / "runs" / "s").read_summary()["dataset"]["skipped_files"]
    assert [Path(p).name for p in skipped] == ["gone.png"]


# --- 12: a failed start never blocks a retry --------------------------------------------------------
def test_a_failed_start_leaves_nothing_that_blocks_a_retry(tmp_path, tiny_dataset):
    data = copy_dataset(tiny_dataset, tmp_path / "data")
    (data / "train" / "alegria" / "broken.png").write_bytes(b"not a png")
    assert cli(train_main, train_args(data, tmp_path / "runs", "run.name=retry")) == 2
    assert not (tmp_path / "runs" / "retry").exists()  # data are checked before the folder is made
    # a folder left by an older version (config.yaml only, no epoch) is reused, not refused
    (tmp_path / "runs" / "retry").mkdir(parents=True)
    (tmp_path / "runs" / "retry" / "config.yaml").write_text("data: {}\n")
    (data / "train" / "alegria" / "broken.png").unlink()
    assert cli(train_main, train_args(data, tmp_path / "runs", "run.name=retry")) == 0
    assert RunFolder(tmp_path / "runs" / "retry").read_summary()["status"] == "finished"


def test_an_existing_finished_run_is_never_overwritten(tmp_path, tiny_dataset, caplog):
    assert cli(train_main, train_args(tiny_dataset, tmp_path, "run.name=done")) == 0
    before = (tmp_path / "done" / "best.pt").read_bytes()
    assert cli(train_main, train_args(tiny_dataset, tmp_path, "run.name=done")) == 2
    assert "exists; choose another run.name or resume it" in caplog.text
    assert (tmp_path / "done" / "best.pt").read_bytes() == before


# --- 13: predict --no-fallback lists what it left out -----------------------------------------------
def test_no_fallback_counts_and_lists_faceless_images(trained_run, tmp_path):
    import json

    photos = tmp_path / "photos"
    photos.mkdir()
    Image.new("RGB", (120, 120), (128, 128, 128)).save(photos / "anger_blank.png")  # no face to find
    assert cli(predict_main, ["--run", str(trained_run), str(photos), "--face", "haar", "--no-fallback",
                              "--out", str(tmp_path / "o"), "--wandb", "disabled"]) == 0
    haar = json.loads((tmp_path / "o" / "comparison.json").read_text())["modes"]["haar"]
    assert haar["no_face"] == 1 and haar["skipped_no_face"] == ["anger_blank.png"] and haar["images"] == 0


# --- 1, 2, 15: W&B unreachable, empty WANDB_MODE, resumed offline runs ------------------------------
def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed once the socket is: connections are refused


@pytest.mark.slow
def test_unreachable_wandb_server_trains_and_records_offline(tmp_path, tiny_dataset, monkeypatch, caplog):
    import logging

    caplog.set_level(logging.INFO)
    monkeypatch.setenv("WANDB_API_KEY", "0" * 40)
    monkeypatch.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{closed_port()}")
    assert cli(train_main, train_args(tiny_dataset, tmp_path, "run.name=w", "wandb.mode=auto", "wandb.init_timeout=5")) == 0
    summary = RunFolder(tmp_path / "w").read_summary()
    assert summary["status"] == "finished" and summary["wandb"]["mode"] == "offline"
    assert "Recording offline instead" in caplog.text and "sync-runs" in caplog.text
    assert "Traceback" not in caplog.text
    (record,) = (tmp_path / "w" / "wandb").glob("offline-run-*")
    assert read_offline_run(record).summary["val/acc"] == pytest.approx(summary["best"]["val/acc"])
    assert not list((tmp_path / "w" / "wandb").glob("run-*"))  # the half-started online record is parked


# --- 26.8: an online start that fails leaves one record and says why -----------------------------------
def test_a_failed_online_start_parks_its_half_started_record_and_says_why(tmp_path, monkeypatch, caplog):
    """A key but no server: W&B's real client gives up after wandb.init_timeout; the half-started online
    record goes to wandb/failed-online/ (sync-runs skips it), the offline record is the only one, and the
    warning says how long it waited and why."""
    import re

    from research.tracking.wandb_log import WandbRun

    monkeypatch.setenv("WANDB_API_KEY", "0" * 40)
    monkeypatch.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{closed_port()}")
    run = WandbRun(run_id="w", run_dir=tmp_path, config={}, mode="online", init_timeout=1)
    run.log_epoch({"epoch": 1, "train/loss": 1.0})
    run.finish()
    wandb_dir = tmp_path / "wandb"
    assert not list(wandb_dir.glob("run-*"))
    assert len(list((wandb_dir / "failed-online").glob("run-*-w"))) == 1
    (record,) = wandb_dir.glob("offline-run-*-w")
    assert find_records([tmp_path]) == [record.resolve()]
    assert re.search(r"W&B online start failed after \d+\.\d s: no answer from http://127\.0\.0\.1:\d+ within "
                     r"wandb\.init_timeout=1 s", caplog.text), caplog.text
    assert "failed-online" in caplog.text and "at most" not in caplog.text


def test_an_online_start_without_a_login_says_so_at_once(tmp_path, monkeypatch, caplog):
    import re
    import time

    from research.tracking.wandb_log import WandbRun

    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    started = time.monotonic()
    run = WandbRun(run_id="n", run_dir=tmp_path, config={}, mode="online", init_timeout=20)
    run.finish()
    assert time.monotonic() - started < 15  # not the 20 s init_timeout: there was nothing to wait for
    assert re.search(r"failed after \d+\.\d s: not logged in to W&B \(run `poetry run wandb login` or set "
                     r"WANDB_API_KEY\)", caplog.text), caplog.text
    assert len(list((tmp_path / "wandb").glob("offline-run-*-n"))) == 1 and not list((tmp_path / "wandb").glob("run-*"))


# --- 26.9, 26.22: sync-runs without a login, with a damaged record, to an unreachable server ------------
def offline_records(tmp_path: Path, names: list[str]) -> list[Path]:
    """Run folders holding one small offline W&B record each (copies of one real record)."""
    from research.tracking.wandb_log import WandbRun

    run = WandbRun(run_id="r", run_dir=tmp_path / "src", config={"optim.lr": 0.1}, mode="offline")
    for epoch in range(1, 4):
        run.log_epoch({"epoch": epoch, "train/loss": 1.0 / epoch})
    run.finish()
    folders = []
    for name in names:
        shutil.copytree(tmp_path / "src", tmp_path / "runs" / name)
        folders.append(tmp_path / "runs" / name)
    shutil.rmtree(tmp_path / "src")
    return folders


def test_sync_runs_without_a_login_is_exit_2_and_sends_nothing(tmp_path, monkeypatch, caplog):
    (run,) = offline_records(tmp_path, ["a"])
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    assert cli(sync_runs_main, [str(tmp_path / "runs")]) == 2
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == ["sync-runs uploads to W&B and needs a login: run `poetry run wandb login` or set WANDB_API_KEY. "
                      "Nothing was uploaded."]
    assert not list(run.rglob("*.synced")) and "Traceback" not in caplog.text


def test_sync_runs_names_a_damaged_record_and_syncs_the_others(tmp_path, monkeypatch, capsys, caplog):
    good, header, middle = offline_records(tmp_path, ["good", "header", "middle"])
    (record,) = header.glob("wandb/offline-run-*/run-*.wandb")
    record.write_bytes(b"\0" * 8 + record.read_bytes()[8:])
    (record,) = middle.glob("wandb/offline-run-*/run-*.wandb")
    data = bytearray(record.read_bytes())
    data[2000:2100] = bytes(b ^ 0xFF for b in data[2000:2100])
    record.write_bytes(bytes(data))
    server = FakeServer().install(monkeypatch)
    assert cli(sync_runs_main, [str(tmp_path / "runs")]) == 1
    lines = dict(line.split(": ", 1) for line in capsys.readouterr().out.splitlines())
    outcome = {Path(k).parents[1].name: v for k, v in lines.items()}
    assert outcome["good"] == "synced"
    assert outcome["header"].startswith("skipped: run-r.wandb is damaged (it does not start as a W&B run file)")
    assert outcome["middle"].startswith("skipped: wandb sync exited with 1: wandb: ERROR could not read") and "CRC" in outcome["middle"]
    assert list(server.runs) == ["r"] and len(server.sync_calls) == 2  # the damaged header never reached wandb sync
    assert "2 of 3 skipped" in caplog.text and "Traceback" not in caplog.text


@pytest.mark.slow
def test_sync_runs_to_an_unreachable_server_stops_at_the_timeout_with_a_message(tmp_path, monkeypatch, capsys, caplog):
    """The real `wandb sync` against a closed port: stopped after --timeout, the rest not tried, exit 2."""
    import time

    offline_records(tmp_path, ["a", "b"])
    monkeypatch.setenv("WANDB_API_KEY", "0" * 40)
    monkeypatch.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{closed_port()}")
    started = time.monotonic()
    assert cli(sync_runs_main, [str(tmp_path / "runs"), "--timeout", "4"]) == 2
    assert time.monotonic() - started < 60
    out = capsys.readouterr().out.splitlines()
    assert "no answer from http://127.0.0.1:" in out[0] and "within 4 s (wandb sync stopped)" in out[0]
    assert out[1].endswith("not tried (the server did not answer)")
    assert "did not answer within --timeout 4 s" in caplog.text and "Traceback" not in caplog.text
    assert not list((tmp_path / "runs").rglob("*.synced"))


# --- 26.16: predict logs into the training run -----------------------------------------------------------
def test_predict_logs_its_table_into_the_training_run(tmp_path, tiny_dataset, monkeypatch, caplog):
    """Offline: the table joins the training run's upload list (no separate <run>-predict run) and
    sync-runs puts it into the training run. Online: the training run is reopened; when that fails, the
    table waits in the upload list and the log says so."""
    caplog.set_level(logging.INFO)
    assert cli(train_main, train_args(tiny_dataset, tmp_path / "runs", "run.name=p", "wandb.mode=offline")) == 0
    run = tmp_path / "runs" / "p"
    argv = ["--run", str(run), str(tiny_dataset / "validation" / "alegria"), "--face", "raw", "--no-gradcam", "--out", str(tmp_path / "o")]
    assert cli(predict_main, argv) == 0
    assert [f.name.rsplit("-", 1)[1] for f in (run / "wandb").glob("offline-run-*")] == ["p"]  # no p-predict run
    uploads = PendingUploads.open(find_uploads([run])[0])
    logged = {key for item in uploads.items if item["kind"] == "log" for key in item["data"]}
    assert uploads.run.id == "p" and {"predictions/new_images", "predictions/raw_sheet"} <= logged
    assert "kept for run p" in caplog.text and "sync-runs" in caplog.text
    server = FakeServer().install(monkeypatch)
    assert cli(sync_runs_main, [str(run)]) == 0
    assert len(server.logged("p")["predictions/new_images"].data) > 0
    # a run recorded online: reopened when it can be, kept for sync-runs when it cannot
    summary = RunFolder(run).read_summary()
    RunFolder(run).write_summary({**summary, "wandb": {**summary["wandb"], "mode": "online"}})
    sessions = len(server.sessions)
    assert cli(predict_main, [*argv, "--wandb", "online"]) == 0
    (reopened,) = server.sessions[sessions:]
    assert reopened.id == "p" and reopened.finished and any("predictions/new_images" in data for data in reopened.logged)
    server.runs.clear()
    caplog.clear()
    assert cli(predict_main, [*argv, "--wandb", "online"]) == 0
    assert "could not be reopened" in caplog.text and "kept for run p" in caplog.text
    pending = PendingUploads.open(find_uploads([run])[0]).pending
    assert "predictions/new_images" in {key for item in pending for key in item.get("data", {})}


# --- 26.24: a sweep writes its trials under the run.dir it was given -------------------------------------
def test_a_sweep_honours_run_dir(tmp_path, tiny_dataset, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    spec = tmp_path / "grid.yaml"
    spec.write_text(SWEEP.format(values="[0.01]"))
    argv = [str(spec), "--sweep-id", "d", "--count", "1", *FAST, f"data.root={tiny_dataset}", f"run.dir={tmp_path / 'mine'}"]
    assert cli(sweep_main, argv) == 0
    folder = tmp_path / "mine" / "sweeps" / "d"
    assert capsys.readouterr().out.strip() == str(folder)
    assert _trials(folder)[0]["state"] == "finished" and (folder / "trials" / "d-t01" / "summary.json").exists()
    assert not (tmp_path / "runs").exists()


def test_empty_wandb_mode_counts_as_unset(tmp_path, tiny_dataset, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "")
    assert cli(train_main, train_args(tiny_dataset, tmp_path, "run.name=e", "wandb.mode=offline")) == 0
    assert list((tmp_path / "e" / "wandb").glob("offline-run-*"))


def test_a_resumed_offline_run_is_one_record_with_every_epoch_once(tmp_path, tiny_dataset, monkeypatch):
    stop_interrupting = interrupt_after_epoch(monkeypatch, 1)
    assert cli(train_main, train_args(tiny_dataset, tmp_path, "run.name=o", "wandb.mode=offline", "train.epochs=3")) == 130
    stop_interrupting()
    assert cli(train_main, [f"run.resume={tmp_path / 'o'}"]) == 0
    records = list((tmp_path / "o" / "wandb").glob("offline-run-*"))
    assert len(records) == 1  # the partial first record moved to wandb/superseded/, kept
    assert len(list((tmp_path / "o" / "wandb" / "superseded").glob("offline-run-*"))) == 1
    history = read_offline_run(records[0]).history
    assert [row["epoch"] for row in history if "train/loss" in row] == [1, 2, 3]
    steps = [row["_step"] for row in history]
    assert steps == sorted(steps)


def test_missing_dlib_is_exit_2_with_one_message(monkeypatch, caplog, tmp_path, trained_run, tiny_dataset) -> None:
    """The optional align extra missing (or hidden): train, predict and evaluate stop with exit code 2,
    one message naming the install command, and nothing written. Runs with or without dlib installed."""
    monkeypatch.setitem(sys.modules, "dlib", None)  # `import dlib` now raises ImportError
    commands = [
        (train_main, [*FAST, f"data.root={tiny_dataset}", f"run.dir={tmp_path / 'runs'}", "data.face_crop=aligned"]),
        (predict_main, ["--run", str(trained_run), str(tiny_dataset / "validation"), "--face", "all", "--out", str(tmp_path / "p")]),
        (evaluate_main, ["--run", str(trained_run), str(tiny_dataset), "--split", "validation", "--face", "aligned",
                         "--out", str(tmp_path / "e")]),
    ]
    for main, argv in commands:
        caplog.clear()
        with caplog.at_level(logging.ERROR), pytest.raises(SystemExit) as exit_info:
            main(argv)
        assert exit_info.value.code == 2
        errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
        assert len(errors) == 1 and "poetry install --extras align" in errors[0], errors
    assert not any(tmp_path.iterdir()), "a failed start left files behind"


def test_init_from_a_plain_state_dict_or_a_damaged_file_says_what_to_use(tmp_path, tiny_dataset, caplog):
    weights = tmp_path / "weights.pth"
    torch.save({"conv.weight": torch.zeros(1)}, weights)
    assert cli(train_main, train_args(tiny_dataset, tmp_path / "runs", f"model.init_from={weights}")) == 2
    assert "a plain state_dict (ImageNet weights, say) goes to model.pretrained_file" in caplog.text
    damaged = tmp_path / "run" / "best.pt"
    damaged.parent.mkdir()
    damaged.write_bytes(b"not a zip")
    caplog.clear()
    assert cli(train_main, train_args(tiny_dataset, tmp_path / "runs", f"model.init_from={damaged.parent}")) == 2
    assert f"model.init_from={damaged.parent}: {damaged} is damaged or not a checkpoint" in caplog.text
    assert "--checkpoint" not in caplog.text and "Traceback" not in caplog.text
    assert not (tmp_path / "runs").exists()


def test_drop_path_on_a_timm_model_without_stochastic_depth(tmp_path, tiny_dataset, caplog):
    assert cli(train_main, train_args(tiny_dataset, tmp_path / "runs", "model.name=timm/vgg11", "data.channels=3",
                                      "model.drop_path=0.1")) == 2
    assert "model.drop_path=0.1: timm/vgg11 has no stochastic depth; set model.drop_path=0" in caplog.text
    caplog.clear()  # with --seeds: one message and exit 2, not one failure per seed
    assert cli(train_main, ["--seeds", "2", *train_args(tiny_dataset, tmp_path / "runs", "model.name=timm/vgg11",
                                                        "data.channels=3", "model.drop_path=0.1")]) == 2
    assert caplog.text.count("has no stochastic depth") == 1


# --- 26.7: a crafted checkpoint runs nothing ---------------------------------------------------------
class _Payload:
    """Unpickling this creates ``marker``: what a crafted checkpoint would do with ``os.system``."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        import builtins

        return builtins.open, (self.marker, "w")


def _crafted_run(trained_run: Path, folder: Path, name: str, *, raw_pickle: bool = False) -> tuple[Path, Path]:
    """A copy of ``trained_run`` whose ``name`` (best.pt or last.pt) is the real checkpoint plus the payload;
    returns the run folder and the marker file the payload would create."""
    import pickle

    run, marker = folder / "run", folder / "PAYLOAD-RAN"
    shutil.copytree(trained_run, run)
    ckpt = torch.load(run / name, map_location="cpu", weights_only=True)
    ckpt["note"] = _Payload(marker)
    if raw_pickle:
        (run / name).write_bytes(pickle.dumps(ckpt))
    else:
        torch.save(ckpt, run / name)
    return run, marker


def _crafted_argv(entry: str, run: Path, data: Path, out: Path) -> tuple[object, list[str]]:
    if entry == "predict":
        return predict_main, ["--run", str(run), str(data / "validation"), "--wandb", "disabled", "--out", str(out)]
    if entry == "evaluate":
        return evaluate_main, ["--run", str(run), str(data), "--split", "validation", "--wandb", "disabled", "--out", str(out)]
    if entry == "export":
        return export_main, ["--run", str(run), "--out", str(out / "model.onnx"), "--check-images", str(data / "validation")]
    if entry == "report":
        return report_main, ["--runs", str(run), "--out", str(out / "results.md")]
    if entry == "resume":
        return train_main, [f"run.resume={run}"]
    return train_main, train_args(data, out, f"model.init_from={run}", "run.name=child")  # init_from


@pytest.mark.parametrize(
    ("entry", "name"),
    [("predict", "best.pt"), ("evaluate", "best.pt"), ("export", "best.pt"), ("report", "best.pt"),
     ("resume", "last.pt"), ("init_from", "best.pt")],
)
def test_a_crafted_checkpoint_is_refused_and_runs_nothing(entry, name, trained_run, tiny_dataset, tmp_path, caplog):
    run, marker = _crafted_run(trained_run, tmp_path, name)
    summary = (run / "summary.json").read_text()
    main, argv = _crafted_argv(entry, run, tiny_dataset, tmp_path / "out")
    assert cli(main, argv) == 2
    assert not marker.exists(), "the checkpoint's payload ran"
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and f"{run / name}" in errors[0] and "was refused without running it" in errors[0], errors
    assert (run / "summary.json").read_text() == summary  # the run folder is left as it was
    assert not (tmp_path / "out" / "child").exists()


def test_a_crafted_bare_pickle_is_refused_too(trained_run, tiny_dataset, tmp_path, caplog):
    run, marker = _crafted_run(trained_run, tmp_path, "best.pt", raw_pickle=True)
    assert cli(predict_main, ["--run", str(run), str(tiny_dataset / "validation"), "--wandb", "disabled"]) == 2
    assert not marker.exists() and f"{run / 'best.pt'} was refused without running it" in caplog.text


def test_checkpoints_hold_plain_types_and_older_ones_with_numpy_floats_still_load(trained_run, tmp_path):
    from research.tracking.runs import UnsafeCheckpointError, read_checkpoint

    for name in ("best.pt", "last.pt"):  # what the trainer writes needs no allow-listed global at all
        assert torch.serialization.get_unsafe_globals_in_checkpoint(str(trained_run / name)) == []
    old = torch.load(trained_run / "last.pt", map_location="cpu", weights_only=True)
    old["trainer"]["history"][0]["lr"] = np.float64(0.003)  # as last.pt files written before held them
    torch.save(old, tmp_path / "old.pt")
    assert read_checkpoint(tmp_path / "old.pt")["trainer"]["history"][0]["lr"] == 0.003
    old["trainer"]["history"][0]["lr"] = np.array([0.003])  # a numpy array is not on the allow-list
    torch.save(old, tmp_path / "array.pt")
    with pytest.raises(UnsafeCheckpointError, match="array.pt was refused"):
        read_checkpoint(tmp_path / "array.pt")


def test_a_config_yaml_with_a_python_tag_runs_nothing(tmp_path, caplog):
    marker = tmp_path / "PAYLOAD-RAN"
    bad = tmp_path / "evil.yaml"
    bad.write_text(f'model:\n  name: !!python/object/apply:builtins.open ["{marker}", "w"]\n')
    assert cli(train_main, ["--config", str(bad), "--print-config"]) == 2
    assert not marker.exists() and f"cannot read config file {bad}" in caplog.text


def test_val_predictions_holding_pickled_objects_are_left_out_of_the_report(trained_run, tmp_path, caplog):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    marker = tmp_path / "PAYLOAD-RAN"
    np.savez(run / "val_predictions.npz", targets=np.array([_Payload(marker)], dtype=object), preds=np.zeros(1))
    assert cli(report_main, ["--runs", str(run), "--out", str(tmp_path / "report" / "results.md")]) == 0
    assert not marker.exists() and "val_predictions.npz cannot be read" in caplog.text


# === issue 26 =====================================================================================
REPO = Path(__file__).resolve().parents[1]


def research_process(tmp_path: Path, *argv: str, name: str = "train") -> subprocess.Popen:
    """``python -m research ARGV`` in its own process (stderr in ``tmp_path/<name>.log``), with its own
    HOME and TMPDIR (``tmp_path/tmp``), so what it leaves in the temp dir can be read back."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_") and k not in ("RANK", "WORLD_SIZE")}
    (tmp_path / "tmp").mkdir(exist_ok=True)
    env.update(PYTHONPATH=str(REPO), HOME=str(tmp_path / "home"), TMPDIR=str(tmp_path / "tmp"), OMP_NUM_THREADS="1",
               WANDB_SILENT="true")
    log_file = (tmp_path / f"{name}.log").open("w")
    return subprocess.Popen([sys.executable, "-m", "research", *argv], cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=log_file, text=True)


def wait_for(condition, what: str, timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def error_lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


# --- 1, 2: SIGTERM is handled like Ctrl-C; a second training into a running one's folder is refused ------
@pytest.mark.slow
def test_sigterm_marks_the_run_and_a_second_training_into_its_folder_is_refused(tmp_path, tiny_dataset, caplog):
    runs = tmp_path / "runs"
    args = train_args(tiny_dataset, runs, "run.name=same", "train.epochs=200", "wandb.mode=offline", "data.cache=mmap")
    first = research_process(tmp_path, "train", *args)
    run = RunFolder(runs / "same")
    try:
        wait_for(run.config_path.exists, "the first run to start")
        # 2: the second training exits 2 at once and touches nothing of the first
        assert cli(train_main, args) == 2
        (message,) = error_lines(caplog)
        assert f"run folder {run.path} is being written by another training (pid {first.pid} on" in message
        assert "choose another run.name or run.dir" in message
        wait_for(run.history_path.exists, "epoch 1 of the first run")
        # 1: SIGTERM mid-training
        first.send_signal(signal.SIGTERM)
        assert first.wait(timeout=120) == 143
    finally:
        if first.poll() is None:
            first.kill()
    log_text = (tmp_path / "train.log").read_text()
    assert "interrupted (SIGTERM) after" in log_text and f"Resume: poetry run train run.resume={run.path}" in log_text
    assert "Traceback" not in log_text
    summary = run.read_summary()
    assert summary["status"] == "interrupted" and summary["epochs_run"] >= 1
    assert torch.load(run.last_path, weights_only=False)["trainer"]["epoch"] == summary["epochs_run"]
    (record,) = (run.path / "wandb").glob("offline-run-*")
    assert read_offline_run(record).exit_code == 143  # the offline W&B record was closed
    assert not list((tmp_path / "tmp").glob("research-cache-*"))  # the mmap cache folder is gone
    assert not (run.path / ".lock").exists()


def test_sigterm_in_process_is_exit_143_and_an_interrupted_run(tmp_path, tiny_dataset, caplog, monkeypatch):
    """The same as above in the test process (fast): SIGTERM after epoch 1 is logged."""
    from research.tracking import wandb_log

    original = wandb_log.WandbRun.log_epoch

    def sigterm(self, row):
        original(self, row)
        if row["epoch"] == 1:
            os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(wandb_log.WandbRun, "log_epoch", sigterm)
    before = signal.getsignal(signal.SIGTERM)
    assert cli(train_main, train_args(tiny_dataset, tmp_path, "run.name=t", "train.epochs=3")) == 143
    assert signal.getsignal(signal.SIGTERM) == before  # the handler is the command's only
    run = RunFolder(tmp_path / "t")
    assert run.read_summary()["status"] == "interrupted" and run.read_summary()["epochs_run"] == 1
    assert "interrupted (SIGTERM) after 1 completed epoch(s); last.pt holds them" in caplog.text
    assert error_lines(caplog) == ["interrupted (SIGTERM)"]


def test_a_termination_signal_travels_between_torchrun_ranks():
    import pickle

    from research.errors import Interrupted, interrupt_exit_code

    again = pickle.loads(pickle.dumps(Interrupted(signal.SIGTERM, "SIGTERM")))  # rank 0 broadcasts what ended it
    assert isinstance(again, KeyboardInterrupt) and interrupt_exit_code(again) == 143 and again.name == "SIGTERM"


# --- 12: Ctrl-C before the first epoch ended -----------------------------------------------------------
def test_ctrl_c_in_epoch_1_says_there_is_nothing_to_resume(tmp_path, tiny_dataset, caplog, monkeypatch):
    from research.engine import trainer as trainer_mod

    def ctrl_c(self, images, targets, *, train):
        raise KeyboardInterrupt

    monkeypatch.setattr(trainer_mod.Trainer, "step", ctrl_c)
    args = train_args(tiny_dataset, tmp_path, "run.name=early")
    assert cli(train_main, args) == 130
    run = RunFolder(tmp_path / "early")
    assert "interrupted (Ctrl-C) before epoch 1 finished" in caplog.text and "rerun the same command" in caplog.text
    assert "last.pt holds" not in caplog.text
    assert run.read_summary()["status"] == "interrupted" and not run.last_path.exists()
    caplog.clear()
    assert cli(train_main, [f"run.resume={run.path}"]) == 2
    (message,) = error_lines(caplog)
    assert f"{run.last_path} not found: the run did not finish an epoch" in message
    assert "there is nothing to resume: rerun the same command (`poetry run train" in message
    monkeypatch.undo()
    assert cli(train_main, args) == 0  # the same command reuses the folder
    assert run.read_summary()["status"] == "finished"


# --- 3: two predicts into one --out ------------------------------------------------------------------
def test_a_second_predict_into_a_busy_out_folder_is_refused(trained_run, tmp_path, tiny_dataset, caplog):
    out = tmp_path / "out"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom research.tracking.claim import PREDICT, FolderClaim\n"
         f"FolderClaim.acquire({str(out)!r}, PREDICT)\nprint('held', flush=True)\ntime.sleep(120)"],
        cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=subprocess.PIPE, text=True,
    )
    argv = ["--run", str(trained_run), str(tiny_dataset / "validation"), "--face", "raw", "--no-gradcam",
            "--out", str(out), "--wandb", "disabled"]
    try:
        assert holder.stdout.readline().strip() == "held"
        assert cli(predict_main, argv) == 2
        (message,) = error_lines(caplog)
        assert f"output folder {out} is being written by another predict (pid {holder.pid} on" in message
        assert "give another --out" in message
        assert sorted(p.name for p in out.iterdir()) == [".lock"]  # nothing written beside the other's files
    finally:
        holder.kill()  # like kill -9: the claim goes with the process
        holder.wait()
    assert cli(predict_main, argv) == 0
    assert (out / "raw" / "predictions.json").is_file() and not (out / ".lock").exists()


# --- 4, 21: read-only outputs --------------------------------------------------------------------------
def mount_namespace_or_skip(tmp_path: Path) -> None:
    """Skip unless this process may mount a tmpfs in a new mount namespace (root, or CAP_SYS_ADMIN)."""
    probe = tmp_path / "probe"
    probe.mkdir()
    if shutil.which("unshare") is None:
        pytest.skip("unshare is not installed")
    done = subprocess.run(["unshare", "-m", "sh", "-c", f"mount -t tmpfs -o size=64k tmpfs {probe}"], capture_output=True)
    probe.rmdir()
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.decode().strip()[:100]})")


def in_mount_namespace(tmp_path: Path, mounts: str, script: str) -> subprocess.CompletedProcess:
    """Run python ``script`` after ``mounts`` (shell ``mount`` commands) in a private mount namespace."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env.update(PYTHONPATH=str(REPO), HOME=str(tmp_path / "home"), OMP_NUM_THREADS="1", WANDB_SILENT="true",
               WANDB_MODE="disabled")
    (tmp_path / "driver.py").write_text(script)
    command = f"{mounts} && exec {sys.executable} {tmp_path / 'driver.py'}"
    return subprocess.run(["unshare", "-m", "sh", "-c", command], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=600)


DRIVER = '''
import json, logging, sys
from research import cli

commands = json.loads(sys.argv[1] if len(sys.argv) > 1 else open({cases!r}).read())
messages = []
logging.Handler.handle = lambda self, record: messages.append(record.getMessage()) if record.levelno >= logging.ERROR else None
for name, main, argv in commands:
    messages.clear()
    try:
        getattr(cli, main)(argv)
        code = 0
    except SystemExit as exit_info:
        code = exit_info.code
    print(json.dumps({{"name": name, "code": code, "errors": list(messages)}}), flush=True)
'''


def run_commands(tmp_path: Path, mounts: str, cases: list[tuple[str, str, list[str]]]) -> dict[str, dict]:
    (tmp_path / "cases.json").write_text(json.dumps(cases))
    done = in_mount_namespace(tmp_path, mounts, DRIVER.format(cases=str(tmp_path / "cases.json")))
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    results = {r["name"]: r for r in map(json.loads, done.stdout.splitlines())}
    assert len(results) == len(cases), done.stderr[-3000:]
    return results


@pytest.mark.slow
def test_read_only_outputs_are_one_line_and_exit_2(trained_run, tiny_dataset, tmp_path):
    mount_namespace_or_skip(tmp_path)
    ro = tmp_path / "ro"
    ro.mkdir()
    src = tmp_path / "jaffe"
    src.mkdir()
    for i in range(2):
        Image.new("L", (16, 16), 100 + i).save(src / f"KA.HA{i}.{i}.tiff")
    cases = [
        ("train run.dir", "train_main", train_args(tiny_dataset, ro / "runs")),
        ("data.cache_dir", "train_main", train_args(tiny_dataset, tmp_path / "runs", "data.cache=mmap",
                                                   f"data.cache_dir={ro / 'cache'}")),
        ("predict", "predict_main", ["--run", str(trained_run), str(tiny_dataset / "validation"), "--out", str(ro / "p")]),
        ("evaluate", "evaluate_main", ["--run", str(trained_run), str(tiny_dataset), "--split", "validation",
                                       "--out", str(ro / "e")]),
        ("report", "report_main", ["--runs", str(trained_run), "--out", str(ro / "reports" / "results.md")]),
        ("prepare-data", "prepare_data_main", ["filenames", str(src), str(ro / "jaffe")]),
        ("export", "export_main", ["--run", str(trained_run), "--out", str(ro / "export" / "model.onnx")]),
    ]
    results = run_commands(tmp_path, f"mount -t tmpfs -o ro,size=64k tmpfs {ro}", [(n, m, [str(a) for a in argv]) for n, m, argv in cases])
    where = {"train run.dir": ro / "runs", "data.cache_dir": ro / "cache", "predict": ro / "p", "evaluate": ro / "e",
             "report": ro / "reports", "prepare-data": ro / "jaffe", "export": ro / "export"}
    for name, result in results.items():
        assert result["code"] == 2, result
        (message,) = result["errors"]
        assert f"cannot write {where[name]}: Read-only file system" in message, result
    assert not (tmp_path / "runs").exists()  # the failed starts left nothing behind


def test_a_disk_that_fills_up_during_predict_is_one_line(trained_run, tiny_dataset, tmp_path, caplog, monkeypatch):
    import errno

    from research import plots

    def full_disk(self, path, **panel):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr(plots.PredictionPanels, "save", full_disk)
    out = tmp_path / "out"
    assert cli(predict_main, ["--run", str(trained_run), str(tiny_dataset / "validation"), "--face", "raw",
                              "--no-gradcam", "--out", str(out), "--wandb", "disabled"]) == 2
    (message,) = error_lines(caplog)
    assert message.startswith(f"cannot write {out / 'raw' / 'panels'}/") and "No space left on device" in message
    assert "Traceback" not in caplog.text and not (out / ".lock").exists()


# --- 5: NaN loss ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("extra", "message"),
    [
        # the EMA weights validated after one epoch at lr 1e6 give NaN scores although the training loss was finite
        (("train.ema_decay=0.998",), "validation loss became nan at epoch 1 (the weights diverged in training). "
         "Lower optim.lr (the peak learning rate is 1.00e+06), set train.grad_clip=1.0, or check the input images; "
         "no epoch finished, so no checkpoint was written."),
        (("train.epochs=3",), "training loss became nan at epoch 2. Lower optim.lr (the peak learning rate is 1.00e+06), "
         "set train.grad_clip=1.0, or check the input images; last.pt holds epoch 1, the last good one."),
    ],
)
def test_a_diverging_run_says_the_epoch_and_the_fix(extra, message, tmp_path, tiny_dataset, caplog):
    args = train_args(tiny_dataset, tmp_path, "run.name=nan", "optim.lr=1e6", "optim.warmup_epochs=0", *extra)
    assert cli(train_main, args) == 2
    assert error_lines(caplog) == [message]
    assert RunFolder(tmp_path / "nan").read_summary()["status"] == "failed"


# --- 10: decompression bombs ---------------------------------------------------------------------------
def jpeg_claiming(path: Path, width: int, height: int) -> Path:
    """A tiny real JPEG whose header (SOF0) claims ``width`` x ``height`` pixels."""
    buffer = io.BytesIO()
    Image.new("L", (16, 16), 128).save(buffer, "JPEG", quality=30)
    data = bytearray(buffer.getvalue())
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = height.to_bytes(2, "big") + width.to_bytes(2, "big")
    path.write_bytes(bytes(data))
    return path


def test_a_jpeg_header_claiming_60000x60000_is_a_bad_file(tmp_path, tiny_dataset, trained_run, caplog):
    data = copy_dataset(tiny_dataset, tmp_path / "data")
    bomb = jpeg_claiming(data / "train" / "alegria" / "bomb.jpg", 60000, 60000)
    assert bomb.stat().st_size < 400
    assert cli(train_main, train_args(data, tmp_path / "runs", "run.name=b")) == 2
    assert f"{bomb}: its header claims 60000x60000 pixels, but the file has only {bomb.stat().st_size} bytes" in caplog.text
    assert cli(train_main, train_args(data, tmp_path / "runs", "run.name=b", "data.bad_files=skip")) == 0
    assert RunFolder(tmp_path / "runs" / "b").read_summary()["dataset"]["skipped_files"] == [str(bomb)]
    photos = tmp_path / "photos"
    photos.mkdir()
    shutil.copy(bomb, photos / "anger_bomb.jpg")
    shutil.copy(next((tiny_dataset / "validation" / "alegria").iterdir()), photos / "happy_1.png")
    caplog.clear()
    out = tmp_path / "o"
    assert cli(predict_main, ["--run", str(trained_run), str(photos), "--face", "raw", "--no-gradcam", "--out", str(out),
                              "--wandb", "disabled"]) == 0
    assert "anger_bomb.jpg: its header claims 60000x60000 pixels" in caplog.text and "(skipped)" in caplog.text
    assert [r["image"] for r in json.loads((out / "raw" / "predictions.json").read_text())] == ["happy_1.png"]


def test_large_images_are_decoded_downscaled_to_the_bound(tmp_path):
    from research.data.images import DECODE_MAX_SIDE, _draft_request, load_image

    gradient = np.linspace(0, 255, 5000, dtype=np.uint8)
    big = np.stack([np.tile(gradient, (3000, 1))] * 3, axis=2)
    Image.fromarray(big).save(tmp_path / "big.jpg", quality=90)
    Image.fromarray(big).save(tmp_path / "big.png")
    with Image.open(tmp_path / "big.jpg") as jpeg:  # the JPEG decoder itself works at half size
        jpeg.draft(jpeg.mode, _draft_request(5000, 3000, DECODE_MAX_SIDE))
        assert jpeg.size == (2500, 1500)
    for name in ("big.jpg", "big.png"):
        image = load_image(tmp_path / name)
        assert image.shape == (round(3000 * DECODE_MAX_SIDE / 5000), DECODE_MAX_SIDE, 3), name
        assert abs(float(image[:, -10:].mean()) - 255) < 6 and float(image[:, :10].mean()) < 6  # the same picture


# --- 11: worker errors, a class "folder" that is a file, a stray image --------------------------------------
def test_a_file_broken_after_the_first_pass_is_one_line_with_data_loader_workers(tmp_path, tiny_dataset, caplog, monkeypatch):
    import research.train as train_mod

    data = copy_dataset(tiny_dataset, tmp_path / "data")
    victim = sorted((data / "train" / "alegria").iterdir())[0]
    real_build_loaders = train_mod.build_loaders

    def overwrite_then_build(*args, **kwargs):  # after the decode pass, before any worker reads it again
        victim.write_bytes(b"garbage, not a PNG any more")
        return real_build_loaders(*args, **kwargs)

    monkeypatch.setattr(train_mod, "build_loaders", overwrite_then_build)
    assert cli(train_main, train_args(data, tmp_path / "runs", "run.name=w", "data.num_workers=2", "data.cache=stream")) == 2
    (message,) = error_lines(caplog)
    assert message.startswith(f"{victim}: cannot be decoded as an image") and "(in DataLoader worker process" in message
    assert "Traceback" not in message and "Caught" not in message and "\n" not in message
    assert RunFolder(tmp_path / "runs" / "w").read_summary()["status"] == "failed"


def test_a_class_folder_that_is_a_file_is_named_as_such(tmp_path, tiny_dataset, caplog):
    data = copy_dataset(tiny_dataset, tmp_path / "data")
    shutil.rmtree(data / "train" / "miedo")
    (data / "train" / "miedo").write_bytes(b"PK\x03\x04 an archive")
    assert cli(train_main, train_args(data, tmp_path / "runs")) == 2
    (message,) = error_lines(caplog)
    assert f"{data / 'train' / 'miedo'} is a file, not a class folder: the fear images must be in a folder" in message
    assert not (tmp_path / "runs").exists()


def test_a_stray_image_in_the_split_folder_is_named(tmp_path, tiny_dataset, caplog):
    from research.data.datasets import load_datasets

    data = copy_dataset(tiny_dataset, tmp_path / "data")
    shutil.copy(next((data / "train" / "alegria").iterdir()), data / "train" / "lost.png")
    bundle = load_datasets(data, keep_size=32)
    assert "1 image(s) directly in the split folder, outside every class folder, are not used: lost.png" in caplog.text
    assert len(bundle.train) == len(load_datasets(tiny_dataset, keep_size=32).train)


# --- 13: your own runs never dirty the git tree -------------------------------------------------------------
def test_default_outputs_are_git_ignored(trained_run, tmp_path, monkeypatch):
    """``report`` (as ``pipeline`` runs it) writes with its defaults into a git checkout holding the project's
    .gitignore, beside files at every other default output path; ``git status`` stays clean."""
    import inspect

    from research.cli import report_main
    from research.config import load_config
    from research.data.download import DEFAULT_DATA_DIR
    from research.sweep import run_local_sweep

    checkout = tmp_path / "checkout"
    checkout.mkdir()
    shutil.copy(REPO / ".gitignore", checkout / ".gitignore")
    git = ["git", "-C", str(checkout), "-c", "user.name=t", "-c", "user.email=t@example.com"]
    for command in (["init", "-q"], ["add", ".gitignore"], ["commit", "-qm", "ignore rules"]):
        subprocess.run([*git, *command], check=True)
    monkeypatch.chdir(checkout)
    assert cli(report_main, ["--runs", str(trained_run)]) == 0  # default --out reports/results.md
    assert (checkout / "reports" / "results.md").is_file() and list((checkout / "reports" / "model_cards").glob("*.md"))
    run_dir = Path(load_config(None, []).run.dir)
    assert inspect.signature(run_local_sweep).parameters["root"].default is None  # sweeps go to <run.dir>/sweeps
    sweeps = run_dir / "sweeps"
    for path in (run_dir / "r" / "best.pt", run_dir / "r" / "wandb" / "offline-run-1" / "run-1.wandb",
                 Path("runs/study/r/summary.json"), sweeps / "s" / "trials.csv", Path(DEFAULT_DATA_DIR) / "course.zip"):
        (checkout / path).parent.mkdir(parents=True, exist_ok=True)
        (checkout / path).write_text("x")
    status = subprocess.run([*git, "status", "--porcelain", "--untracked-files=all"], capture_output=True, text=True, check=True)
    assert status.stdout == "", status.stdout


# --- 19: report over a folder with damaged run files ---------------------------------------------------------
def test_report_skips_runs_with_damaged_files_and_names_them(trained_run, tmp_path, caplog):
    from research.cli import report_main

    runs = tmp_path / "runs"
    shutil.copytree(trained_run, runs / "good", ignore=shutil.ignore_patterns("*.pt"))
    damage = {
        "truncated": lambda run: (run / "summary.json").write_text((run / "summary.json").read_text()[:40]),
        "empty": lambda run: (run / "summary.json").write_text(""),
        "random": lambda run: (run / "summary.json").write_bytes(np.random.default_rng(0).bytes(300)),
        "binary-config": lambda run: (run / "config.yaml").write_bytes(b"\x00\xff\xfe\x89PNG" * 20),
    }
    for name, hurt in damage.items():
        shutil.copytree(trained_run, runs / name, ignore=shutil.ignore_patterns("*.pt"))
        hurt(runs / name)
    out = tmp_path / "report" / "results.md"
    assert cli(report_main, ["--runs", str(runs), "--out", str(out), "--no-new-image-figures"]) == 0
    markdown = out.read_text()
    # the good run (its id: trained) is in the comparison table (other tests may have added evaluations of it)
    assert len([row for row in table_rows_of(markdown, "scratch_cnn_small") if "| finetune |" in row]) == 1
    skipped = next(line for line in markdown.splitlines() if line.startswith("- Skipped runs"))
    for name in ("truncated", "empty", "random"):
        assert f"`{name}` (damaged summary.json: " in skipped
        assert f"skipping run {name} ({runs / name}): damaged summary.json" in caplog.text
    assert "`trained` (damaged config.yaml: not valid YAML" in skipped and f"folder {runs / 'binary-config'})" in skipped
    assert "Traceback" not in caplog.text


def table_rows_of(markdown: str, first_cell: str) -> list[str]:
    return [line for line in markdown.splitlines() if line.startswith(f"| {first_cell} |")]


# --- 20: data.cache=mmap on a disk that is (or becomes) full ------------------------------------------------
MMAP_DRIVER = '''
import json, logging, os, sys
from pathlib import Path
import numpy as np
from research import cli
from research.data.cache import CacheSpaceError, MmapImages

small, filled = Path(sys.argv[1]), Path(sys.argv[2])
messages = []
logging.Handler.handle = lambda self, record: messages.append(record.getMessage()) if record.levelno >= logging.ERROR else None
try:
    cli.train_main(json.loads(sys.argv[3]))
except SystemExit as exit_info:
    print(json.dumps({"case": "start", "code": exit_info.code, "errors": messages, "left": os.listdir(small)}), flush=True)
try:  # too big for the disk: refused when the file is made, nothing left
    MmapImages(200, 64, folder=small)
except CacheSpaceError as err:
    print(json.dumps({"case": "too big", "error": str(err), "left": os.listdir(small)}), flush=True)
store = MmapImages(40, 64, folder=filled)  # 480 KiB reserved on a 1 MiB disk
with open(filled / "filler", "wb") as fh:  # then something else fills the disk
    try:
        while True:
            fh.write(b"x" * 65536)
            fh.flush()
    except OSError:
        pass
for i in range(40):  # writing every slot needs no new block: no SIGBUS
    store.write(i, np.full((64, 64, 3), i, np.uint8))
print(json.dumps({"case": "filled", "ok": all(int(store[i][0, 0, 0]) == i for i in range(40))}), flush=True)
'''


@pytest.mark.slow
def test_mmap_cache_on_a_full_disk_is_a_clear_error_and_never_a_bus_error(tiny_dataset, tmp_path):
    mount_namespace_or_skip(tmp_path)
    small, filled = tmp_path / "small", tmp_path / "filled"
    small.mkdir()
    filled.mkdir()
    argv = train_args(tiny_dataset, tmp_path / "runs", "data.cache=mmap", f"data.cache_dir={small}")
    (tmp_path / "driver.py").write_text(MMAP_DRIVER)
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env.update(PYTHONPATH=str(REPO), HOME=str(tmp_path / "home"), OMP_NUM_THREADS="1")
    mounts = f"mount -t tmpfs -o size=64k tmpfs {small} && mount -t tmpfs -o size=1m tmpfs {filled}"
    done = subprocess.run(
        ["unshare", "-m", "sh", "-c", f'{mounts} && exec {sys.executable} {tmp_path / "driver.py"} "$0" "$1" "$2"',
         str(small), str(filled), json.dumps(argv)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]  # a bus error would be -7
    cases = {r["case"]: r for r in map(json.loads, done.stdout.splitlines())}
    start = cases["start"]
    assert start["code"] == 2 and start["left"] == []
    (message,) = start["errors"]
    needed = math.ceil(70 * (32 * 32 * 3 + 128) * 1.1 / 1024)  # the tiny dataset's 70 images, 10 % headroom
    assert f"data.cache=mmap needs {needed} KiB free on the cache disk (data.cache_dir={small}), only 6" in message
    assert "KiB are. Set data.cache_dir to a folder on a disk with room, or use data.cache=stream" in message
    assert "cannot write the image cache" in cases["too big"]["error"] and "No space left on device" in cases["too big"]["error"]
    assert cases["too big"]["left"] == []  # the partial file and its folder are gone
    assert cases["filled"]["ok"]
    assert not (tmp_path / "runs").exists()


# --- 25: prepare-data given an archive or an image; interrupted imports ---------------------------------------
@pytest.mark.parametrize(("name", "content", "what"), [
    ("fer2013.tar.gz", b"\x1f\x8b\x08\x00" + bytes(100), "is a gzip-compressed file (.tar.gz?); fer2013 expects FER2013's CSV"),
    ("face.jpg", None, "is an image file; fer2013 expects FER2013's CSV"),
])
def test_prepare_data_given_an_archive_or_an_image(name, content, what, tmp_path, caplog):
    from research.cli import prepare_data_main

    src = tmp_path / name
    if content is None:
        Image.new("RGB", (8, 8)).save(src)
    else:
        src.write_bytes(content)
    assert cli(prepare_data_main, ["fer2013", str(src), str(tmp_path / "dest")]) == 2
    (message,) = error_lines(caplog)
    assert message.startswith(f"SRC {src} {what}") and "Traceback" not in caplog.text
    assert not (tmp_path / "dest").exists()


def test_an_interrupted_import_says_what_is_left_and_training_refuses_it(tmp_path, caplog, monkeypatch):
    from research.cli import prepare_data_main
    from research.data.importers import writer

    src = tmp_path / "jaffe"
    src.mkdir()
    for i, code in enumerate(["HA", "SA", "AN", "DI", "FE", "SU", "NE"] * 3):
        Image.new("L", (16, 16), 20 * (i % 7) + i).save(src / f"KA.{code}{i}.{i}.tiff")
    real_write, written = writer.write_atomic, []

    def ctrl_c_after_five(path, data):
        if path.name != "manifest.json" and len(written) == 5:
            raise KeyboardInterrupt
        real_write(path, data)
        written.append(path)

    monkeypatch.setattr(writer, "write_atomic", ctrl_c_after_five)
    dest = tmp_path / "dest"
    assert cli(prepare_data_main, ["filenames", str(src), str(dest)]) == 130
    assert f"import interrupted: {dest} holds 4 of 21 files, and its manifest.json says \"complete\": false" in caplog.text
    assert "Rerun the same command to finish" in caplog.text
    assert json.loads((dest / "manifest.json").read_text())["complete"] is False
    caplog.clear()
    assert cli(train_main, train_args(dest, tmp_path / "runs")) == 2
    (message,) = error_lines(caplog)
    assert f"{dest} is an unfinished import: {dest / 'manifest.json'} says \"complete\": false" in message
    assert f"poetry run prepare-data filenames {src} {dest}" in message
    assert not (tmp_path / "runs").exists()


# --- 26: a damaged landmark model, a section given a value, tiny validation fractions --------------------------
def test_a_damaged_landmark_model_is_named_with_the_fix(trained_run, tiny_dataset, tmp_path, caplog, monkeypatch):
    pytest.importorskip("dlib")
    from research.faces import align

    damaged = tmp_path / align.LANDMARK_MODEL
    damaged.write_bytes(b"\x00not a dlib model" * 8)
    monkeypatch.setattr(align, "_landmark_model_path", lambda: damaged)
    align._load_models.cache_clear()
    try:
        assert cli(predict_main, ["--run", str(trained_run), str(tiny_dataset / "validation"), "--face", "aligned",
                                  "--out", str(tmp_path / "p"), "--wandb", "disabled"]) == 2
    finally:
        align._load_models.cache_clear()
    (message,) = error_lines(caplog)
    assert message.startswith(f"the landmark model {damaged} is damaged (") and "--force-reinstall" in message
    assert not (tmp_path / "p").exists()


@pytest.mark.parametrize("where", ["yaml", "override"])
def test_a_config_section_given_a_value_names_the_section(where, tmp_path, caplog):
    if where == "yaml":
        preset = tmp_path / "bad.yaml"
        preset.write_text("optim: 5\n")
        argv = ["--config", str(preset)]
    else:
        argv = ["optim=5"]
    assert cli(train_main, argv) == 2
    (message,) = error_lines(caplog)
    assert "optim is a section of settings (optim.name, optim.lr" in message and "not a value: got " in message
    assert ": None" not in message


def test_a_tiny_val_fraction_logs_what_it_took(tmp_path, tiny_dataset, caplog):
    from research.data.datasets import load_datasets

    caplog.set_level(logging.INFO)
    train_only = tmp_path / "train_only"
    shutil.copytree(tiny_dataset / "train", train_only / "train")
    total = sum(1 for p in (train_only / "train").rglob("*.png"))
    bundle = load_datasets(train_only, val_fraction=0.0001, keep_size=32)
    assert len(bundle.val) == 7  # one image of every class, so every class is validated
    share = 100 * 7 / total
    assert "data.val_fraction=0.0001 rounds to no image for" in caplog.text
    assert f"the validation share is therefore {share:.1f} %, not 0.01 %" in caplog.text
    assert f"7 of {total} images ({share:.1f} %; data.val_fraction=0.0001" in caplog.text
    assert "fraction 0.00" not in caplog.text


def test_a_class_with_one_image_cannot_be_split(tmp_path, tiny_dataset, caplog):
    train_only = tmp_path / "train_only"
    shutil.copytree(tiny_dataset / "train", train_only / "train")
    for extra in sorted((train_only / "train" / "miedo").iterdir())[1:]:
        extra.unlink()
    assert cli(train_main, train_args(train_only, tmp_path / "runs", "data.val_fraction=0.2")) == 2
    (message,) = error_lines(caplog)
    assert "class(es) ['fear'] have a single image, so data.val_fraction=0.2 cannot put one in train and one in validation" in message
    assert "both splits" not in message and not (tmp_path / "runs").exists()
