"""Smoke test of benchmarks/loader_throughput.py: model-only, loader and training figures per num_workers,
read back from its JSON and table; bad input gives exit 2."""

from __future__ import annotations

import json

import pytest

from tests.conftest import load_benchmark


def test_every_workers_count_is_measured_and_reported(tiny_dataset, tmp_path, capsys):
    out = tmp_path / "loader.json"
    argv = ["--preset", "scratch_cnn", "--data", str(tiny_dataset), "--workers", "0", "1", "auto",
            "--model-batches", "2", "--repeats", "2", "--json", str(out), "data.batch_size=8", "data.image_size=32"]
    assert load_benchmark("loader_throughput").main(argv) == 0
    report = json.loads(out.read_text())
    assert report["device"] == "cpu" and report["gpu"] is None and report["batch_size"] == 8
    assert report["repeats"] == 2 and len(report["model_images_per_s_all"]) == 2 and report["model_images_per_s"] > 0
    assert [r["workers_requested"] for r in report["rows"]] == ["0", "1", "auto"]
    assert [r["workers"] for r in report["rows"]] == [0, 1, 0]  # auto: no workers on CPU
    for row in report["rows"]:
        assert len(row["loader_images_per_s_all"]) == 2 and len(row["epoch_images_per_s_all"]) == 2
        assert min(row["loader_images_per_s_all"]) <= row["loader_images_per_s"] <= max(row["loader_images_per_s_all"])
        assert row["epoch_images_per_s"] > 0 and row["epoch_s"] > 0
        assert row["gpu_utilisation_pct"] is None  # no GPU to sample
    assert len(report["loadavg_start"]) == 3 and report["started"].endswith("UTC")
    table = capsys.readouterr().out
    assert "| num_workers | loader images/s | training images/s |" in table
    assert "| auto (0) |" in table and "| 1 |" in table and "n/a" in table and "median (min-max) of 2 rounds" in table


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--workers", "two"], "--workers 'two'"),
        (["--data", "/nonexistent/faces"], "/nonexistent/faces"),
        (["data.num_workers=x"], "data.num_workers"),
        (["--json", "/proc/no/such/place.json"], "--json /proc/no/such/place.json cannot be written"),
    ],
)
def test_bad_input_is_exit_2_with_the_reason(argv, message, caplog):
    assert load_benchmark("loader_throughput").main(["--preset", "scratch_cnn", *argv]) == 2
    assert message in caplog.text


def test_model_batches_must_be_positive(capsys):
    with pytest.raises(SystemExit) as exit_:
        load_benchmark("loader_throughput").main(["--model-batches", "0"])
    assert exit_.value.code == 2 and "'0' is not an integer >= 1" in capsys.readouterr().err
