"""Training in two processes (torchrun, gloo, CPU): one run folder, metrics of the whole validation set, resume.

The end-to-end tests start ``python -m torch.distributed.run`` (what the ``torchrun`` script runs)
twice: one epoch, then a resume to two epochs. Each launch costs two interpreters importing torch.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from torch.utils.data import DistributedSampler

from research.config import ConfigError, load_config
from research.engine.distributed import Distributed
from research.inference.evaluate import evaluate_run
from research.inference.loaded import load_run
from research.tracking.runs import RunFolder
from research.train import train
from tests.conftest import FAST

ROOT = Path(__file__).resolve().parents[1]
METRICS = ("acc", "top2", "macro_f1", "weighted_f1", "ece")


def torchrun(args: list[str], home: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_") and k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env.update(OMP_NUM_THREADS="1", HOME=str(home), PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")])))
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--standalone", "-m", "research", "train", *args]
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    return done


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory, tiny_dataset) -> dict:
    """A 2-process run of one epoch (its folder's state kept), then resumed to two epochs.

    With a weight EMA: the ranks validate the averaged weights, whose batch-norm statistics each rank
    averaged from its own batches until rank 0's are broadcast; the metric test below catches a miss.
    """
    runs, home = tmp_path_factory.mktemp("ddp_runs"), tmp_path_factory.mktemp("ddp_home")
    first = torchrun([*FAST, f"data.root={tiny_dataset}", f"run.dir={runs}", "run.name=ddp", "train.device=cpu",
                      "train.ema_decay=0.5", "train.label_smoothing=0.1", "train.class_weighting=sqrt"], home)
    run = runs / "ddp"
    after_first = {
        "stdout": first.stdout, "folders": sorted(p.name for p in runs.iterdir()),
        "files": {str(p.relative_to(run)) for p in run.rglob("*") if p.is_file()},
        "summary": json.loads((run / "summary.json").read_text()), "history": RunFolder(run).read_history(),
    }
    resumed = torchrun([f"run.resume={run}", "train.epochs=2"], home)
    return {"run": run, "runs": runs, "first": after_first, "resumed_stdout": resumed.stdout}


@pytest.mark.slow
def test_two_processes_write_one_complete_run_folder(ddp_run):
    first, run = ddp_run["first"], ddp_run["run"]
    assert first["folders"] == ["ddp"]
    assert first["stdout"].split() == [str(run)]  # rank 0 alone prints the run folder
    for name in ("config.yaml", "history.csv", "summary.json", "best.pt", "last.pt", "classification_report.txt"):
        assert name in first["files"], name
    for fig in ("curves_loss", "confusion_counts", "reliability"):
        assert f"figures/{fig}.png" in first["files"], fig
    assert [row["epoch"] for row in first["history"]] == [1]
    summary = first["summary"]
    assert summary["status"] == "finished" and summary["epochs_run"] == 1 and summary["env"]["processes"] == 2
    assert summary["dataset"]["train_images"] > 0


@pytest.mark.slow
def test_two_process_metrics_equal_one_process_evaluation_of_best(ddp_run, tiny_dataset, tmp_path):
    """Every validation image counted once: the gathered epoch metrics and the summary equal best.pt
    scored by one process on the whole validation set; the loss (a class-weighted, label-smoothed
    criterion here) is computed over the whole epoch, so the ranks' batching does not change it."""
    run = ddp_run["run"]
    loaded = load_run(run, which="best", device="cpu")
    single = evaluate_run(loaded, tiny_dataset, split="validation", out=tmp_path)
    summary = RunFolder(run).read_summary()
    best_row = next(r for r in RunFolder(run).read_history() if r["epoch"] == summary["best_epoch"])
    assert single.metrics["images"] == summary["dataset"]["val_images"]
    for key in METRICS:
        assert summary["best"][f"val/{key}"] == pytest.approx(single.metrics[key], abs=1e-6), key
        assert best_row[f"val/{key}"] == pytest.approx(single.metrics[key], abs=1e-6), key
    assert "loss" not in single.metrics  # evaluate reports plain cross-entropy only, as nll
    assert best_row["val/nll"] == pytest.approx(single.metrics["nll"], abs=1e-6)
    assert summary["best"]["val/nll"] == pytest.approx(single.metrics["nll"], abs=1e-6)
    # the training criterion: the history's (two ranks, batched) equals the final evaluation's (one process)
    assert best_row["val/loss"] == pytest.approx(summary["best"]["val/loss"], abs=1e-6)
    assert best_row["val/loss"] != pytest.approx(best_row["val/nll"], abs=1e-3)  # the criterion is not plain CE here


@pytest.mark.slow
def test_two_processes_resume_from_last(ddp_run):
    run = ddp_run["run"]
    assert sorted(p.name for p in ddp_run["runs"].iterdir()) == ["ddp"]
    assert ddp_run["resumed_stdout"].split() == [str(run)]
    history = RunFolder(run).read_history()
    assert [row["epoch"] for row in history] == [1, 2]
    assert history[0] == ddp_run["first"]["history"][0]  # epoch 1 kept as it was, not retrained
    summary = RunFolder(run).read_summary()
    assert summary["status"] == "finished" and summary["epochs_run"] == 2


def test_one_process_without_torchrun_environment():
    single = Distributed.from_env({})
    assert not single.enabled and single.is_main
    assert single.on_main(lambda: 3) == 3 and single.broadcast("x") == "x" and single.all_true(False) is False
    assert Distributed.from_env({"WORLD_SIZE": "1", "RANK": "0"}) == single
    assert Distributed.from_env({"WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "1"}) == Distributed(1, 2, 1)


@pytest.mark.parametrize("size", [15, 16, 1])
def test_shards_cover_every_sample_once(size):
    """Across ranks the samples marked real are the dataset, each index once; the padding is marked."""
    dataset = list(range(size))
    real = []
    for rank in range(2):
        loader = SimpleNamespace(sampler=DistributedSampler(dataset, num_replicas=2, rank=rank, shuffle=True, seed=1))
        shard = Distributed(rank=rank, world_size=2).shard(loader)
        real.extend(shard.indices[shard.real].tolist())
    assert sorted(real) == list(range(size))
    assert Distributed().shard(loader) is None


def test_balanced_sampler_is_refused_with_several_processes(tmp_path, tiny_dataset, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    cfg = load_config(None, [*FAST, f"data.root={tiny_dataset}", f"run.dir={tmp_path}", "data.sampler=balanced"])
    with pytest.raises(ConfigError, match="data.sampler=balanced"):
        train(cfg)
    assert not any(tmp_path.iterdir())


def _children(pid: int) -> list[int]:
    """Process ids whose parent is ``pid`` (from /proc)."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads the process table from /proc (Linux)")
def test_workers_exit_when_torchrun_is_killed(tmp_path, tiny_dataset):
    """Issue 26, item 27: kill -9 of the launcher must not leave its workers training."""
    runs = tmp_path / "runs"
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_") and k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env.update(OMP_NUM_THREADS="1", HOME=str(tmp_path), PYTHONPATH=str(ROOT))
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--standalone", "-m", "research",
               "train", *FAST, f"data.root={tiny_dataset}", f"run.dir={runs}", "run.name=k", "train.device=cpu",
               "train.epochs=500"]
    launcher = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    workers: list[int] = []
    try:
        deadline = time.monotonic() + 300
        while not (runs / "k" / "history.csv").exists():  # both workers are training
            assert launcher.poll() is None and time.monotonic() < deadline, "the run did not start"
            time.sleep(0.2)
        workers = _children(launcher.pid)
        assert len(workers) == 2, workers
        launcher.kill()
        launcher.wait()
        deadline = time.monotonic() + 30
        while any(_alive(w) for w in workers) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not any(_alive(w) for w in workers), "workers still running after their launcher was killed"
    finally:  # whatever happened, nothing of this test keeps running
        if launcher.poll() is None:
            launcher.kill()
        for w in workers:
            if _alive(w):
                os.kill(w, signal.SIGKILL)
    assert json.loads((runs / "k" / "summary.json").read_text())["status"] in ("interrupted", "failed")
