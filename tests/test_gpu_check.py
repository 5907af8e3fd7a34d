"""benchmarks/gpu_check.sh, the prepared GPU script of issue 12 (item 5), run on the CPU the way a lent GPU
machine runs it: plain ``python -S`` (no .pth files, so ``research`` is importable only through the
PYTHONPATH the script sets) with the dependencies on PYTHONPATH. Its tables and figures are read back."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "gpu_check.sh"


def bare_python(tmp_path: Path) -> Path:
    """An interpreter that reads no .pth file, as on a machine without the project installed."""
    wrapper = tmp_path / "python-bare"
    wrapper.write_text(f'#!/bin/sh\nexec "{sys.executable}" -S "$@"\n')
    wrapper.chmod(0o755)
    return wrapper


def run_script(tmp_path: Path, *args: str, pythonpath: str | None, **env: str) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    environ.update(PYTHON=str(bare_python(tmp_path)), **env)
    if pythonpath is not None:
        environ["PYTHONPATH"] = pythonpath
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, env=environ, timeout=900,
                          cwd=tmp_path)


@pytest.mark.slow
def test_every_step_is_measured_and_written_from_a_bare_python(tiny_dataset, tmp_path):
    data = tmp_path / "train_only"
    shutil.copytree(tiny_dataset / "train", data / "train")  # no validation/: the time-to-accuracy race runs too
    site = sysconfig.get_paths()["purelib"]
    # relative paths are the caller's, not the repository's; every step runs, on small images and few batches
    done = run_script(tmp_path, "train_only", "out", pythonpath=site, TTA_BUDGET="2", REPEATS="1", MODEL_BATCHES="2",
                      OVERRIDES="data.image_size=32 data.batch_size=16", OMP_NUM_THREADS="1")
    assert done.returncode == 0, done.stderr[-3000:]
    out = tmp_path / "out"
    report = (out / "gpu_check.md").read_text()
    assert "CUDA: none (CPU run)" in report and f"data: {data}" in report
    expected = {
        "scratch_cnn-preset": (True, [0, 2, 4, 0]), "scratch_cnn-fp32": (False, [0]),
        "efficientnet_lite0-preset": (False, [0, 2, 4, 0]), "efficientnet_lite0-amp": (True, [0]),
    }
    for name, (amp, workers) in expected.items():
        figures = json.loads((out / f"loader-{name}.json").read_text())
        assert figures["amp"] is amp and [r["workers"] for r in figures["rows"]] == workers
        assert figures["image_size"] == 32, figures  # OVERRIDES reached every table
        assert figures["train_images"] > 0 and all(r["epoch_images_per_s"] > 0 for r in figures["rows"])
    for heading in ("## scratch_cnn, preset", "## scratch_cnn, fp32 without channels-last",
                    "## efficientnet_lite0, preset", "## efficientnet_lite0, AMP on", "## time to 60 %, 2 s per side"):
        assert heading in report
    tta = json.loads((out / "tta.json").read_text())
    assert tta["project"]["device"] == tta["baseline"]["device"] == "cpu" and tta["split"]["identical_on_both_sides"]
    assert "(all: " in report and report.count(" s)\n") >= 6  # every step's seconds and the total
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["gpu_check.md", "tta.json", *(f"loader-{name}.json" for name in expected)]
    )  # six files: the device tool brings back at most eight, none in subfolders


def test_bad_folder_or_missing_packages_is_exit_2(tiny_dataset, tmp_path):
    done = run_script(tmp_path, str(tmp_path / "nothing"), str(tmp_path / "out"), pythonpath=None)
    assert done.returncode == 2 and "has no train/ folder" in done.stderr
    done = run_script(tmp_path, str(tiny_dataset), str(tmp_path / "out"), pythonpath=None)  # no site-packages
    assert done.returncode == 2 and "cannot import what the benchmarks need" in done.stderr
    assert "ModuleNotFoundError" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "out").exists()
