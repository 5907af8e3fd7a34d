"""Shared fixtures: tiny synthetic datasets and a fast training config (CPU, no network)."""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

os.environ.setdefault("WANDB_SILENT", "true")
os.environ.pop("WANDB_API_KEY", None)
os.environ.pop("WANDB_MODE", None)

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(__file__).resolve().parents[2] / "shared"
SHARED_DATA = SHARED / "data"
SHARED_WEIGHTS = SHARED / "weights" / "tf_efficientnet_lite0.imagenet.pth"

def face_photo() -> np.ndarray:
    """A real frontal face: the Grace Hopper portrait matplotlib ships (600x512x3 uint8 RGB), so face tests need
    no download and no extra test dependency."""
    from matplotlib import cbook
    from PIL import Image

    with cbook.get_sample_data("grace_hopper.jpg") as fh:
        return np.asarray(Image.open(fh).convert("RGB"))


def load_benchmark(name: str) -> ModuleType:
    """``benchmarks/<name>.py`` as a module, importing its neighbours (``hostinfo``) as when it is run."""
    spec = importlib.util.spec_from_file_location(name, REPO / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(REPO / "benchmarks"))
    return module


# A CPU-sized training setup: tiny model, tiny images, one thread.
FAST = [
    "model.name=scratch_cnn_small",
    "data.image_size=32",
    "data.batch_size=16",
    "data.channels=1",
    "train.epochs=1",
    "train.threads=1",
    "augment.preset=light",
    "optim.lr=3e-3",
    "wandb.mode=disabled",
]


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path_factory, monkeypatch):
    """No test may read the developer's W&B credentials or write to their home. The home (W&B's cache
    and artifact staging) is removed after the test: it is never read again."""
    home = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(home / ".config" / "wandb"))
    monkeypatch.setenv("WANDB_CACHE_DIR", str(home / ".cache" / "wandb"))
    monkeypatch.setenv("WANDB_DATA_DIR", str(home / ".local" / "wandb"))
    yield
    shutil.rmtree(home, ignore_errors=True)


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory) -> Path:
    """A tiny folder dataset in the course layout (Spanish folders), written by the demo generator."""
    from research.data.demo import write_demo_dataset

    root = tmp_path_factory.mktemp("tiny") / "dataset"
    write_demo_dataset(root, size=48, seed=3, scale=0.04, folder_names="spanish")
    return root


@pytest.fixture(scope="session")
def tiny_english_dataset(tmp_path_factory) -> Path:
    from research.data.demo import write_demo_dataset

    root = tmp_path_factory.mktemp("tiny_en") / "dataset"
    write_demo_dataset(root, size=48, seed=4, scale=0.04, folder_names="english")
    return root


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory, tiny_dataset) -> Path:
    """One finished 2-epoch run on the tiny dataset, shared by predict/evaluate/report tests."""
    from research.config import load_config
    from research.train import train

    runs = tmp_path_factory.mktemp("runs")
    cfg = load_config(None, [*FAST, f"data.root={tiny_dataset}", "train.epochs=2", f"run.dir={runs}", "run.name=trained"])
    summary = train(cfg)
    return Path(summary.run_dir)


def interrupt_after_epoch(monkeypatch, epoch: int):
    """Simulate Ctrl-C right after ``epoch`` is logged (its checkpoint is already saved).
    Returns a function that ends the simulation."""
    from research.tracking import wandb_log

    original = wandb_log.WandbRun.log_epoch

    def ctrl_c(self, row):
        original(self, row)
        if row["epoch"] == epoch:
            raise KeyboardInterrupt

    monkeypatch.setattr(wandb_log.WandbRun, "log_epoch", ctrl_c)
    return lambda: monkeypatch.setattr(wandb_log.WandbRun, "log_epoch", original)
