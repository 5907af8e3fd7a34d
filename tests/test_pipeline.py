"""The one-command study on demo data, 1 epoch, end to end (slow: trains three models)."""

from __future__ import annotations

import re

import pytest

from research.cli import pipeline_main

TINY = ["data.demo_scale=0.05", "data.image_size=32", "data.batch_size=32", "train.threads=1", "wandb.mode=offline"]


@pytest.mark.slow
def test_pipeline_on_demo_data_end_to_end(tmp_path, monkeypatch):
    import research.pipeline

    monkeypatch.chdir(tmp_path)
    real_train = research.pipeline.train

    def train(cfg, **kwargs):
        if cfg.model.name == "resnet18":
            raise RuntimeError("simulated crash inside one model's training")
        return real_train(cfg, **kwargs)

    monkeypatch.setattr(research.pipeline, "train", train)
    with pytest.raises(SystemExit) as e:
        pipeline_main(["--data", "demo", "--epochs", "1", "--models", "resnet18,scratch_cnn,mobilenet_v3_small",
                       "--runs-dir", "runs/study", "--out", "reports/results.md", *TINY])
    # the failing model is reported, and the other two models still make the report
    assert e.value.code == 1
    report = (tmp_path / "reports" / "results.md").read_text()
    assert "scratch_cnn" in report and "mobilenet_v3_small" in report
    assert "synthetic" in report.lower()
    for link in re.findall(r"\]\(([^)]+\.png)\)", report):
        assert (tmp_path / "reports" / link).is_file(), link
    runs = sorted(p.name for p in (tmp_path / "runs" / "study").iterdir() if (p / "summary.json").exists())
    assert len(runs) == 2
    for run in runs:
        assert (tmp_path / "runs" / "study" / run / "predictions" / "haar" / "predictions.json").exists()
    assert len(list((tmp_path / "runs" / "study" / "demo-new-images").glob("*.png"))) == 14


def test_pipeline_help(capsys):
    with pytest.raises(SystemExit) as e:
        pipeline_main(["--help"])
    assert e.value.code == 0 and "--data demo" in capsys.readouterr().out


def test_pipeline_checks_every_preset_before_training(tmp_path, monkeypatch, caplog):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as e:
        pipeline_main(["--data", "demo", "--models", "scratch_cnn,scratch_cnn_small_preset", "--runs-dir", "runs/study", *TINY])
    assert e.value.code == 2 and "no config preset or file 'scratch_cnn_small_preset'" in caplog.text
    assert not (tmp_path / "runs").exists() and not (tmp_path / "reports").exists()
