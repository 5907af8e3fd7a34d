"""benchmarks/gpu_check.sh, the prepared GPU script of issue 12 (item 5), run on the CPU as a lent GPU
machine would run it (plain python with PYTHONPATH): its tables and figures are read back."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "gpu_check.sh"


def run_script(*args: str, budget: str = "0") -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHON": sys.executable, "TTA_BUDGET": budget}
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, env=env, timeout=600)


@pytest.mark.slow
def test_every_preset_and_variant_is_measured_and_written(tiny_dataset, tmp_path):
    out = tmp_path / "gpu"
    done = run_script(str(tiny_dataset), str(out))
    assert done.returncode == 0, done.stderr[-2000:]
    report = (out / "gpu_check.md").read_text()
    assert "CUDA: none (CPU run)" in report
    for preset in ("scratch_cnn", "efficientnet_lite0"):
        for variant, workers in (("default", [0, 2, 4, 0]), ("fp32", [0])):
            assert f"## {preset}, {variant}" in report
            figures = json.loads((out / f"loader-{preset}-{variant}.json").read_text())
            assert figures["preset"] == preset and [r["workers"] for r in figures["rows"]] == workers
            assert figures["amp"] == (variant == "default" and preset == "scratch_cnn")  # the effnet preset trains in fp32
            assert all(r["epoch_images_per_s"] > 0 for r in figures["rows"])
    assert not (out / "tta.json").exists()  # a dataset with validation/: no time-to-accuracy run
    assert len(list(out.iterdir())) <= 8  # what the device tool brings back


def test_a_folder_without_train_is_exit_2(tmp_path):
    done = run_script(str(tmp_path / "nothing"), str(tmp_path / "out"))
    assert done.returncode == 2 and "has no train/ folder" in done.stderr
    assert not (tmp_path / "out").exists()
