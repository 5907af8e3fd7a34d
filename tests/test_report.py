"""The markdown report: tables, honest labels, computed conclusions, links that resolve.

Runs are compared only within their dataset (one section per dataset) and sweeps are
summarised per sweep, unless --compare-across-datasets asks for one combined ranking.
Run and sweep folders are written by hand (no training), so these tests take seconds.
"""

from __future__ import annotations

import csv
import re
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import numpy as np
import pytest
import yaml
from PIL import Image

from research import report
from research.cli import report_main
from research.config import load_config, to_yaml
from research.data.classes import CANONICAL_CLASSES
from research.report import (
    SYNTHETIC_LABEL,
    NoRunsError,
    WandbReportError,
    build_report,
    collect_runs,
    report_cli,
)
from research.tracking.runs import RunFolder, write_json

FIGURES = (
    "curves_loss.png", "curves_acc.png", "curves_top2.png", "curves_macro_f1.png", "curves_lr.png",
    "confusion_counts.png", "confusion_normalized.png", "reliability.png",
)  # fmt: skip


def tiny_png(path: Path, color: tuple[int, int, int] = (200, 30, 30)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), color).save(path)


def best_metrics(acc: float, f1: float, ece: float) -> dict[str, float]:
    return {
        "val/loss": 1.0 - acc / 2, "val/acc": acc, "val/top2": acc + 0.1,
        "val/macro_f1": f1, "val/weighted_f1": f1 + 0.02, "val/ece": ece,
    }  # fmt: skip


def make_run(
    root: Path,
    run_id: str,
    *,
    model: str,
    f1: float,
    acc: float,
    ece: float,
    synthetic: bool,
    latency: float,
    params: int,
    status: str = "finished",
    final_train_acc: float = 0.9,
    dataset: str | None = None,
    spread: tuple[float, float] | None = None,
    overrides: tuple[str, ...] = (),
) -> RunFolder:
    """A run folder with the files the trainer writes (numbers chosen by the test).

    ``dataset`` names a real dataset; by default real runs use dataset_emociones. ``spread``: the quartiles of
    the repeated latency timings (default: latency x 0.9 and x 1.1); ``overrides``: config keys."""
    run = RunFolder(root / run_id)
    run.path.mkdir(parents=True)
    run.write_text("config.yaml", to_yaml(load_config(None, [f"model.name={model}", *overrides])))
    run.write_history(
        [
            {"epoch": 1, "train/loss": 1.8, "train/acc": 0.4, "val/loss": 1.7, "val/acc": 0.45, "lr": 1e-3},
            {"epoch": 2, "train/loss": 0.6, "train/acc": final_train_acc, "val/loss": 1.0, "val/acc": acc, "lr": 1e-4},
        ]
    )  # fmt: skip
    summary: dict[str, Any] = {
        "run_id": run_id, "status": status, "model": model,
        "dataset": {
            "root": "demo" if synthetic else f"data/{dataset or 'dataset_emociones'}",
            "name": "synthetic demo data" if synthetic else dataset or "dataset_emociones",
            "synthetic": synthetic, "train_images": 700, "val_images": 200,
        },
        "pretrained": "none" if synthetic else "torchvision hub", "mode": "finetune",
        "class_names": list(CANONICAL_CLASSES), "params_total": params, "params_trainable": params,
        "seed": 7, "git_commit": "abc1234", "command": f"poetry run train --config {model}",
        "created": "2026-01-02T03:04:05", "env": {"python": "3.11.7", "torch": "2.5.0", "device": "cpu"},
        "image_size": 64, "best_epoch": 2, "epochs_run": 2, "monitor": "val/macro_f1",
        "best": best_metrics(acc, f1, ece), "final": best_metrics(acc, f1, ece),
        "train_seconds": 12.5, "train_images_per_s": 112.0, "latency_ms_per_image": latency,
        "latency_ms_quartiles": list(spread or (round(latency * 0.9, 3), round(latency * 1.1, 3))),
    }  # fmt: skip
    if status != "finished":
        for key in ("best", "final", "best_epoch"):
            summary.pop(key)
    run.write_summary(summary)
    for name in FIGURES:
        tiny_png(run.figures / name)
    run.write_text("classification_report.txt", f"{model} report\n\n  accuracy  {acc:.3f}\n")
    counts = [[10 if i == j else 0 for j in range(7)] for i in range(7)]
    counts[2][5] = 6  # fear -> sadness: the most confused pair
    counts[1][0] = 2
    write_json(
        run.path / "confusion_counts.json",
        {"class_names": list(CANONICAL_CLASSES), "counts": counts},
    )
    per_class = {
        c: {"precision": 0.8, "recall": 0.8, "f1": 0.8, "support": 10.0} for c in CANONICAL_CLASSES
    }
    per_class["disgust"] = {"precision": 0.5, "recall": 0.25, "f1": 0.333, "support": 12.0}
    write_json(run.path / "per_class.json", per_class)
    return run


def prediction(image: str, mode: str, winner: str, true: str, face: bool | None) -> dict[str, Any]:
    scores = {c: (0.7 if c == winner else 0.05) for c in CANONICAL_CLASSES}
    return {
        "image": image, "path": f"/photos/{image}", "mode": mode, "face_found": face,
        "fallback": face is False, "box": [1, 1, 5, 5] if face else None, "scores": scores,
        "winner": winner, "confidence": 0.7, "true": true, "correct": winner == true,
        "panel": f"panels/{Path(image).stem}.png",
    }  # fmt: skip


def add_predictions(run: RunFolder) -> None:
    from research.inference.comparison import compare_modes

    raw = [
        prediction("anger_1.jpg", "raw", "sadness", "anger", None),
        prediction("fear_1.jpg", "raw", "fear", "fear", None),
        prediction("happiness_1.jpg", "raw", "happiness", "happiness", None),
    ]
    haar = [
        prediction("anger_1.jpg", "haar", "anger", "anger", True),  # fixed by the crop
        prediction("fear_1.jpg", "haar", "fear", "fear", False),
        prediction("happiness_1.jpg", "haar", "happiness", "happiness", True),
    ]
    for mode, records in (("raw", raw), ("haar", haar)):
        write_json(run.predictions / mode / "predictions.json", records)
        tiny_png(run.predictions / mode / "sheet.png", (0, 0, 200))
    comparison = compare_modes({"raw": raw, "haar": haar})
    comparison.update(images_dir="/photos/new-images", skipped=[], checkpoint="best")
    write_json(run.predictions / "comparison.json", comparison)


def add_evaluation(run: RunFolder) -> None:
    write_json(
        run.evaluations / "x" / "metrics.json",
        {
            "acc": 0.65, "top2": 0.8, "macro_f1": 0.6, "weighted_f1": 0.64, "loss": 1.1, "ece": 0.05,
            "images": 40, "dataset": "data/heldout", "face": "none", "tta": "none",
            "per_class": {c: {"precision": 0.6, "recall": 0.6, "f1": 0.6, "support": 5} for c in CANONICAL_CLASSES},
        },
    )  # fmt: skip


@pytest.fixture
def runs_root(tmp_path: Path) -> Path:
    root = tmp_path / "runs"
    real = make_run(
        root, "resnet18-20260101-000000", model="resnet18", f1=0.70, acc=0.75, ece=0.05,
        synthetic=False, latency=12.0, params=11_000_000, final_train_acc=0.95,
    )  # fmt: skip
    add_evaluation(real)
    make_run(
        root, "mobilenet_v3_large-20260101-000000", model="mobilenet_v3_large", f1=0.64, acc=0.70,
        ece=0.12, synthetic=False, latency=4.0, params=5_500_000,
    )  # fmt: skip
    demo = make_run(
        root, "scratch_cnn-20260101-000000", model="scratch_cnn", f1=0.55, acc=0.60, ece=0.20,
        synthetic=True, latency=3.0, params=1_000_000,
    )  # fmt: skip
    add_predictions(demo)
    make_run(
        root, "mobilenet_v3_small-20260101-000000", model="mobilenet_v3_small", f1=0.9, acc=0.9,
        ece=0.1, synthetic=False, latency=1.0, params=2_000_000, status="running",
    )  # fmt: skip
    return root


def table_rows(markdown: str, first_cell: str) -> list[str]:
    return [line for line in markdown.splitlines() if line.startswith(f"| {first_cell} |")]


def row_cells(markdown: str, first_cell: str) -> dict[str, str]:
    """The first table row that starts with ``first_cell``, as {column header: cell}: tests read cells by
    name, so a new column does not shift what they check."""
    lines = markdown.splitlines()
    for i, line in enumerate(lines):
        if line.startswith(f"| {first_cell} |"):
            header = next(lines[j - 1] for j in range(i, 0, -1) if lines[j].startswith("|---"))
            names = [c.strip() for c in header.strip("|").split("|")]
            return dict(zip(names, (c.strip() for c in line.strip("|").split("|")), strict=True))
    raise AssertionError(f"no table row starts with {first_cell!r}")


def section(markdown: str, heading: str) -> str:
    """The text under ``heading`` up to the next ``## `` heading."""
    assert heading in markdown, heading
    return markdown.split(heading, 1)[1].split("\n## ", 1)[0]


REAL = "## Dataset: dataset_emociones (real images, 700 train / 200 validation)"
DEMO = "## Dataset: synthetic demo data (700 train / 200 validation)"  # the name says synthetic: once


def png_links(markdown: str) -> list[str]:
    return re.findall(r"\]\(([^)]+\.png)\)", markdown)


def assert_chart(path: Path) -> None:
    """A chart PNG that exists and is not one flat colour."""
    assert path.is_file(), path
    pixels = np.asarray(Image.open(path).convert("L"))
    assert pixels.std() > 1.0, path


def test_one_comparison_per_dataset_with_synthetic_label(runs_root: Path, tmp_path: Path) -> None:
    out = report_cli([runs_root], tmp_path / "reports" / "results.md")
    markdown = out.read_text()
    real, demo = section(markdown, REAL), section(markdown, DEMO)
    assert markdown.index(REAL) < markdown.index(DEMO)  # real datasets first
    # Each dataset's table holds its own runs only, best validation macro-F1 first.
    assert [row.split(" | ")[1] for row in real.splitlines() if row.startswith(("| resnet18 |", "| mobilenet"))] == [
        "`resnet18-20260101-000000`", "`mobilenet_v3_large-20260101-000000`",
    ]  # fmt: skip
    resnet = table_rows(real, "resnet18")[0]
    assert "| 0.750 | 0.850 | 0.700 | 0.720 |" in resnet
    assert "11.00 / 11.00" in resnet and "torchvision hub" in resnet
    assert "scratch_cnn" not in real and SYNTHETIC_LABEL not in real
    assert len(table_rows(demo, "scratch_cnn")) == 1
    assert "resnet18" not in demo and "mobilenet" not in demo
    # The honest label sits above the synthetic dataset's table and conclusions and the new-image table.
    assert SYNTHETIC_LABEL in demo.split("### Comparison on", 1)[0]
    assert SYNTHETIC_LABEL in section(markdown, "## New images")
    # One chart per dataset, each a real image.
    charts = [png_links(real)[0], png_links(demo)[0]]
    assert charts == ["figures/comparison_dataset_emociones.png", "figures/comparison_synthetic-demo-data_synthetic.png"]
    for chart in charts:
        assert_chart(out.parent / chart)
    assert "- Single runs: 3, on 2 datasets, compared only within each dataset" in markdown
    assert "`scratch_cnn-20260101-000000` (scratch_cnn): none" in markdown
    per_model = section(markdown, "## Per model")
    assert "Trained on dataset_emociones (real images)." in per_model
    assert "Trained on synthetic demo data." in per_model and "(SYNTHETIC demo data)" not in markdown
    assert "![top-2 accuracy](figures/resnet18-20260101-000000/curves_top2.png)" in per_model
    assert "![learning rate](figures/resnet18-20260101-000000/curves_lr.png)" in per_model
    assert "figure missing" not in per_model


def test_conclusions_are_computed_per_dataset(runs_root: Path, tmp_path: Path) -> None:
    markdown = report_cli([runs_root], tmp_path / "results.md").read_text()
    real = section(markdown, REAL).split("### Conclusions on dataset_emociones", 1)[1]
    demo = section(markdown, DEMO).split("### Conclusions on synthetic demo data", 1)[1]
    assert (
        "- Best model by validation macro-F1: **resnet18** with 0.700 (accuracy 0.750), 6.0 points above "
        "the runner-up, mobilenet_v3_large (0.640). With 200 validation images, one image is worth "
        "0.50 accuracy points."
    ) in real
    assert (
        "- **mobilenet_v3_large** is faster at inference than the best model, resnet18: 4.00 ms/image (repeated "
        "timings 3.60-4.40) against 12.00 ms/image (repeated timings 10.80-13.20), 3.0x (CPU, batch 1); it gives "
        "up 6.0 points of macro-F1 (0.640 vs 0.700)."
    ) in real
    assert (
        "- **mobilenet_v3_large** is smaller than the best model, resnet18: 5.50 M parameters against 11.00 M, "
        "2.0x fewer; it gives up 6.0 points of macro-F1 (0.640 vs 0.700)."
    ) in real
    assert (
        "- **resnet18** is the best calibrated configuration: validation ECE 0.050 (the worst: "
        "mobilenet_v3_large, 0.120)."
    ) in real
    assert (
        "The most frequent confusion is true **fear** predicted as **sadness**: 6 of 16 fear validation "
        "images (37.5%)."
    ) in real
    assert "The weakest class is **disgust**: F1 0.333" in real
    assert (
        "Overfitting check: at the last epoch (2) train accuracy is 0.950 and validation accuracy 0.750, "
        "so train is 20.0 points above validation"
    ) in real
    assert "The best epoch is the last one (2 of 2): val/macro_f1 was still improving" in real
    # The synthetic run is alone on its dataset: nothing is compared with it.
    assert "**scratch_cnn** with 0.550 (accuracy 0.600); it is the only run on this dataset" in demo
    assert (
        "On the new images the Haar face crop helped (+33.3 points): accuracy 0.667 raw (3 labelled) "
        "vs 1.000 cropped (3 labelled)"
    ) in demo
    assert "the crop fixed 1 prediction(s), broke 0 and changed the winner of 0 more" in demo
    assert "no face was found in 1 of 3 image(s) (the whole image was scored for those)" in demo
    assert (
        "- On the new images, **scratch_cnn** has a mean top-class probability of 0.700 over 3 image(s) "
        "(raw, no crop), against an accuracy of 0.667 on 3 labelled image(s), so it is over-confident by "
        "3.3 points."
    ) in demo
    assert "- **scratch_cnn** has a validation ECE of 0.200 (0 is perfect calibration)." in demo
    # Nothing compares runs across datasets.
    assert "scratch_cnn" not in real and "resnet18" not in demo
    assert "Caution" not in markdown and "different datasets" not in markdown
    assert "is also the one" not in markdown


def test_every_link_resolves_relative_to_the_markdown(runs_root: Path, tmp_path: Path) -> None:
    out = report_cli([runs_root], tmp_path / "reports" / "results.md")
    markdown = out.read_text()
    links = re.findall(r"\]\(([^)]+)\)", markdown)
    assert len(links) >= 3 * len(FIGURES) + 2  # per-run figures, charts, sheets, configs
    for link in links:
        assert not link.startswith(("/", "http")), link
        assert (out.parent / unquote(link)).is_file(), link
    assert "figures/scratch_cnn-20260101-000000/predictions_haar_sheet.png" in links
    assert "figures/resnet18-20260101-000000/config.yaml" in links


def test_new_images_section_and_photo_opt_out(runs_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "results.md"
    markdown = report_cli([runs_root], out).read_text()
    section = markdown.split("## New images", 1)[1].split("\n## ", 1)[0]
    assert (
        "| image | true | raw winner (score) | haar winner (score) | face found | correct raw / haar |"
        in section
    )
    assert "| anger_1.jpg | anger | sadness (0.70) | anger (0.70) | yes | no / yes |" in section
    assert (
        "| fear_1.jpg | fear | fear (0.70) | fear (0.70) | no (whole image used) | yes / yes |"
        in section
    )
    assert "raw: 0.667 on 3 labelled of 3; haar: 1.000 on 3 labelled of 3" in section
    assert "sheet.png" in section

    again = report_cli([runs_root], out, include_new_image_figures=False).read_text()
    assert "sheet.png" not in again and "## New images" in again
    assert not list((tmp_path / "figures").glob("*/predictions_*_sheet.png"))


def test_evaluations_get_a_column_per_set(runs_root: Path, tmp_path: Path) -> None:
    markdown = report_cli([runs_root], tmp_path / "results.md").read_text()
    section = markdown.split("## Evaluations", 1)[1].split("\n## ", 1)[0]
    assert "| model | run | trained on | x |" in section
    assert (
        "| resnet18 | `resnet18-20260101-000000` | dataset_emociones (real images) | 0.650 / 0.600 (n=40) |"
        in section
    )
    assert "scratch_cnn" not in section  # no evaluation: no row


def test_unfinished_runs_are_listed_as_skipped(runs_root: Path, tmp_path: Path) -> None:
    run_set = collect_runs([runs_root])
    assert [r.run_id for r in run_set.runs] == [
        "resnet18-20260101-000000",
        "mobilenet_v3_large-20260101-000000",
        "scratch_cnn-20260101-000000",
    ]
    markdown = build_report(run_set, tmp_path / "results.md")
    assert "Skipped runs (not finished, or unreadable): `mobilenet_v3_small-20260101-000000` (running)" in markdown
    assert "| mobilenet_v3_small |" not in markdown


def test_same_inputs_give_the_same_report(runs_root: Path, tmp_path: Path) -> None:
    when = datetime(2026, 1, 1, 12, 0)
    first = build_report(collect_runs([runs_root]), tmp_path / "results.md", generated=when)
    second = build_report(collect_runs([runs_root]), tmp_path / "results.md", generated=when)
    assert first == second


def test_empty_folder_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "runs").mkdir()
    with pytest.raises(
        NoRunsError, match=r"no finished runs under .*runs; train one with `poetry run train"
    ):
        report_cli([tmp_path / "runs"], tmp_path / "results.md")


def test_wandb_failure_says_it_needs_network_and_login(monkeypatch, tmp_path: Path) -> None:
    def offline(path: str) -> list[dict[str, Any]]:
        raise ConnectionError("api.wandb.ai unreachable")

    monkeypatch.setattr(report.wandb_log, "fetch_project_runs", offline)
    with pytest.raises(WandbReportError, match=r"network access and `wandb login`.*--runs runs/"):
        report_cli([], tmp_path / "results.md", wandb_path="me/fer-research")


def test_wandb_runs_fill_the_comparison_table(monkeypatch, tmp_path: Path) -> None:
    def fake_runs(path: str) -> list[dict[str, Any]]:
        return [
            {
                "name": name, "url": f"https://wandb.ai/me/fer-research/runs/{name}",
                "config": {"model.name": model, "data.root": "demo", "model.mode": "finetune", "data.image_size": 64},
                "summary": {
                    **{f"best/val/{k}": v for k, v in (("acc", f1 + 0.05), ("macro_f1", f1), ("ece", 0.1))},
                    "params_total": 1_000_000, "train_seconds": 5.0, "latency_ms_per_image": 2.0,
                    "train_images_per_s": 50.0, "best_epoch": 2,
                },
                "history": [{"epoch": 1, "train/acc": 0.5, "val/acc": 0.4}, {"epoch": 2, "train/acc": 0.8, "val/acc": 0.6}],
            }
            for name, model, f1 in (("a", "scratch_cnn", 0.4), ("b", "resnet18", 0.6))
        ]  # fmt: skip

    monkeypatch.setattr(report.wandb_log, "fetch_project_runs", fake_runs)
    markdown = report_cli([], tmp_path / "results.md", wandb_path="me/fer-research").read_text()
    lines = markdown.splitlines()
    assert lines.index(table_rows(markdown, "resnet18")[0]) < lines.index(
        table_rows(markdown, "scratch_cnn")[0]
    )
    # Both W&B runs trained on demo data: one dataset, compared within it.
    demo = section(markdown, "## Dataset: synthetic demo data\n")
    assert "20.0 points above the runner-up, scratch_cnn (0.400)" in demo
    assert len(table_rows(demo, "resnet18")) == len(table_rows(demo, "scratch_cnn")) == 1
    assert markdown.count("## Dataset: ") == 1
    assert SYNTHETIC_LABEL in demo
    assert "https://wandb.ai/me/fer-research/runs/b" in markdown


def test_wandb_sweep_runs_are_reported_with_their_sweep(monkeypatch, tmp_path: Path) -> None:
    """`report --wandb`: the server is asked for finished runs only; a run of a W&B sweep is a trial of
    that sweep (its own section, ranked by the sweep metric), not a single run."""
    import wandb

    from research.sweep import load_sweep_yaml
    from tests.fake_wandb import FakeApi, FakeSweep, api_run

    config = load_sweep_yaml(Path(__file__).resolve().parents[1] / "sweeps" / "scratch_cnn.yaml")
    sweep = FakeSweep("abc123", config["name"], config, "https://wandb.ai/me/fer-research/sweeps/abc123")
    api = FakeApi([
        api_run("single", model="resnet18", f1=0.6),
        api_run("bright-sun-1", model="scratch_cnn", f1=0.7, overrides=("optim.lr=0.001",), sweep=sweep, created_at="2026-01-01T00:00:01"),
        api_run("calm-sea-2", model="scratch_cnn", f1=0.9, overrides=("optim.lr=0.01",), sweep=sweep, created_at="2026-01-01T00:00:02"),
        api_run("crashed-3", model="scratch_cnn", f1=0.99, state="crashed", sweep=sweep),
    ])  # fmt: skip
    monkeypatch.setattr(wandb, "Api", api)
    markdown = report_cli([], tmp_path / "results.md", wandb_path="me/fer-research").read_text()
    assert api.asked == [("me/fer-research", {"state": "finished"})]
    demo = section(markdown, "## Dataset: synthetic demo data (100 train / 50 validation)")
    assert len(table_rows(demo, "resnet18")) == 1 and "bright-sun-1" not in demo and "calm-sea-2" not in demo
    sweeps = markdown.split("### Sweep `abc123`", 1)[1]
    assert f"- On W&B: [{config['name']}](https://wandb.ai/me/fer-research/sweeps/abc123)" in sweeps
    assert "- Best trial: 2 (run `calm-sea-2`), val/macro_f1 0.900, with optim.lr=0.01" in sweeps
    trial_rows = [line for line in sweeps.splitlines() if line.startswith("| ") and "`" in line]
    assert [row.split(" | ")[1] for row in trial_rows] == ["`calm-sea-2`", "`bright-sun-1`"]  # best first
    assert "crashed-3" not in markdown


def make_sweep(root: Path, sweep_id: str, trials: list[tuple[float, str, float | None]]) -> Path:
    """A sweep folder as research.sweep writes it: sweep.yaml, trials.csv, best.json and a
    run folder per trial under trials/ (on synthetic demo data). ``trials``: (lr, state, metric)."""
    folder = root / sweep_id
    folder.mkdir(parents=True)
    config = {
        "method": "grid", "metric": {"name": "val/macro_f1", "goal": "maximize"},
        "parameters": {"train.lr": {"values": [lr for lr, _, _ in trials]}, "model.name": {"value": "scratch_cnn"}},
    }  # fmt: skip
    (folder / "sweep.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    rows = []
    for index, (lr, state, metric) in enumerate(trials, start=1):
        run_id = f"{sweep_id}-t{index:02d}"
        make_run(
            folder / "trials", run_id, model="scratch_cnn", f1=metric or 0.0, acc=metric or 0.0, ece=0.1,
            synthetic=True, latency=2.0, params=1_000_000, status="finished" if metric is not None else "failed",
        )  # fmt: skip
        row: dict[str, Any] = {"trial": index, "run_id": run_id, "train.lr": lr, "model.name": "scratch_cnn", "state": state, "metric": metric}
        row.update(
            {"epochs": 2, "run_dir": str(folder / "trials" / run_id)} if metric is not None else {"error": "boom"}
        )
        rows.append(row)
    columns = list(dict.fromkeys(k for row in rows for k in row))
    with (folder / "trials.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    best = max((r for r in rows if r["metric"] is not None), key=lambda r: r["metric"])
    write_json(folder / "best.json", {"metric": "val/macro_f1", "goal": "maximize", "best": best, "trials": len(rows)})
    return folder


@pytest.fixture
def two_datasets_and_a_sweep(runs_root: Path) -> Path:
    """runs_root (dataset_emociones x2, synthetic demo x1) plus fer2013 x2 and a sweep of 3 trials."""
    make_run(
        runs_root, "scratch_cnn_small-20260102-000000", model="scratch_cnn_small", f1=0.45, acc=0.5,
        ece=0.1, synthetic=False, latency=1.0, params=1_170_000, dataset="fer2013",
    )  # fmt: skip
    make_run(
        runs_root, "efficientnet_b0-20260102-000000", model="efficientnet_b0", f1=0.40, acc=0.45,
        ece=0.2, synthetic=False, latency=9.0, params=4_000_000, dataset="fer2013",
    )  # fmt: skip
    # The trials score higher than every single run: mixed in, they would top the rankings.
    make_sweep(
        runs_root / "sweeps", "lr-sweep",
        [(0.01, "finished", 0.81), (0.001, "finished", 0.93), (0.1, "failed", None), (0.003, "stopped (hyperband)", 0.6)],
    )  # fmt: skip
    return runs_root


FER = "## Dataset: fer2013 (real images, 700 train / 200 validation)"


def test_datasets_and_sweeps_are_reported_apart(two_datasets_and_a_sweep: Path, tmp_path: Path) -> None:
    out = report_cli([two_datasets_and_a_sweep], tmp_path / "reports" / "results.md")
    markdown = out.read_text()
    assert markdown.count("## Dataset: ") == 3
    tables = {heading: section(markdown, heading) for heading in (REAL, FER, DEMO)}
    models = {
        REAL: ["resnet18", "mobilenet_v3_large"], FER: ["scratch_cnn_small", "efficientnet_b0"], DEMO: ["scratch_cnn"],
    }  # fmt: skip
    for heading, body in tables.items():
        rows = [line.split(" | ")[0][2:] for line in body.splitlines() if line.startswith("| ") and "`" in line]
        assert rows == models[heading], heading  # this dataset's runs only, best macro-F1 first
        assert "lr-sweep" not in body and "Caution" not in body and "different datasets" not in body
    fer = tables[FER].split("### Conclusions on fer2013", 1)[1]
    assert "**scratch_cnn_small** with 0.450 (accuracy 0.500), 5.0 points above the runner-up, efficientnet_b0 (0.400)." in fer
    assert ("- **scratch_cnn_small**, the best model, is also the fastest at inference: 1.00 ms/image (repeated timings "
            "0.90-1.10) against 9.00 ms/image (repeated timings 8.10-9.90) for efficientnet_b0, the fastest other model "
            "(CPU, batch 1).") in fer
    assert ("- **scratch_cnn_small**, the best model, is also the smallest: 1.17 M parameters against 4.00 M for "
            "efficientnet_b0, the smallest other model.") in fer
    assert "resnet18" not in fer and "scratch_cnn " not in fer

    sweeps = section(markdown, "## Sweeps")
    assert "### Sweep `lr-sweep`" in sweeps
    assert "- Metric: `val/macro_f1` (maximize)" in sweeps
    assert "- Trials: 4 (1 failed, 2 finished, 1 stopped (hyperband))" in sweeps
    assert "- Dataset: synthetic demo data\n" in sweeps
    assert "- Best trial: 2 (run `lr-sweep-t02`), val/macro_f1 0.930, with train.lr=0.001, model.name=scratch_cnn" in sweeps
    assert SYNTHETIC_LABEL in sweeps
    assert "| trial | run | train.lr | model.name | val/macro_f1 | state | epochs |" in sweeps
    trial_rows = [line for line in sweeps.splitlines() if re.match(r"\| \d+ \|", line)]
    assert trial_rows == [
        "| 2 | `lr-sweep-t02` | 0.001 | scratch_cnn | 0.930 | finished | 2 |",
        "| 1 | `lr-sweep-t01` | 0.01 | scratch_cnn | 0.810 | finished | 2 |",
        "| 4 | `lr-sweep-t04` | 0.003 | scratch_cnn | 0.600 | stopped (hyperband) | 2 |",
        "| 3 | `lr-sweep-t03` | 0.1 | scratch_cnn | n/a | failed | n/a |",
    ]
    # Trials appear nowhere but in their sweep: not ranked, not skipped, no per-model section.
    outside = markdown.replace(sweeps, "")
    assert "lr-sweep-t" not in outside
    assert "- Sweeps (summarised per sweep, not ranked with the single runs): `lr-sweep` (4 trial(s))" in markdown
    assert "- Single runs: 5, on 3 datasets, compared only within each dataset" in markdown

    links = re.findall(r"\]\(([^)]+)\)", markdown)
    assert "figures/sweeps/lr-sweep/sweep.yaml" in links
    for link in links:
        assert (out.parent / unquote(link)).is_file(), link
    charts = [link for link in png_links(markdown) if link.startswith("figures/comparison_")]
    assert len(charts) == len(set(charts)) == 3
    for chart in charts:
        assert_chart(out.parent / chart)

    when = datetime(2026, 1, 1, 12, 0)
    again = [build_report(collect_runs([two_datasets_and_a_sweep]), out, generated=when) for _ in range(2)]
    assert again[0] == again[1]


def test_a_sweep_folder_given_directly(two_datasets_and_a_sweep: Path, tmp_path: Path) -> None:
    folder = two_datasets_and_a_sweep / "sweeps" / "lr-sweep"
    markdown = report_cli([folder], tmp_path / "results.md").read_text()
    assert "## Dataset: " not in markdown and "## Per model" not in markdown
    assert "- Single runs: none" in markdown
    assert "- Best trial: 2 (run `lr-sweep-t02`)" in section(markdown, "## Sweeps")
    assert "Skipped runs" not in markdown  # the failed trial is the sweep's, shown in its table


def test_compare_across_datasets_keeps_one_ranking(runs_root: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "reports" / "results.md"
    with pytest.raises(SystemExit) as e:
        report_main(["--runs", str(runs_root), "--out", str(out), "--compare-across-datasets"])
    assert e.value.code == 0 and capsys.readouterr().out.strip() == str(out)
    markdown = out.read_text()
    assert "## Dataset: " not in markdown
    table = section(markdown, "## Comparison")
    rows = [line.split(" | ")[0][2:] for line in table.splitlines() if line.startswith("| ") and "`" in line]
    assert rows == ["resnet18", "mobilenet_v3_large", "scratch_cnn"]
    assert "| synthetic demo data |" in table_rows(table, "scratch_cnn")[0]
    assert "ranked together across 2 datasets (asked for with --compare-across-datasets)" in markdown
    assert_chart(out.parent / "figures" / "model_comparison.png")
    conclusions = section(markdown, "## Conclusions")
    first_bullet = next(line for line in conclusions.splitlines() if line.startswith("- "))
    assert first_bullet == (
        "- Caution: the runs used 2 different datasets (dataset_emociones, synthetic demo data); "
        "validation scores are only comparable between runs on the same data."
    )
    assert "**scratch_cnn** is faster at inference than the best model, resnet18: 3.00 ms/image" in conclusions

    with pytest.raises(SystemExit):
        report_main(["--runs", str(runs_root), "--out", str(out)])
    assert "## Comparison\n" not in out.read_text() and REAL in out.read_text()


def test_conclusions_never_compare_noise(tmp_path: Path) -> None:
    """Seeds of one architecture differ in latency by CPU load, not by model: no speed or size "win" between
    two configurations of it; calibration is picked and stated per configuration, mean ± std over seeds; two
    architectures whose repeated timings overlap are not called faster, nor models of equal size smaller."""
    root = tmp_path / "runs"
    for seed, (f1, ece, latency) in enumerate([(0.70, 0.10, 2.0), (0.68, 0.14, 7.2), (0.69, 0.12, 3.0)]):
        make_run(root, f"a-s{seed}", model="scratch_cnn", f1=f1, acc=f1, ece=ece, synthetic=False, latency=latency,
                 params=1_000_000, overrides=("optim.lr=0.001", f"run.seed={seed}"))
    for seed, (f1, ece, latency) in enumerate([(0.60, 0.02, 9.0), (0.58, 0.32, 2.1), (0.61, 0.05, 2.2)]):
        make_run(root, f"b-s{seed}", model="scratch_cnn", f1=f1, acc=f1, ece=ece, synthetic=False, latency=latency,
                 params=1_000_000, overrides=("optim.lr=0.01", f"run.seed={seed}"))
    conclusions = build_report(collect_runs([root]), tmp_path / "r.md").split("### Conclusions on", 1)[1]
    assert "faster" not in conclusions and "fastest" not in conclusions and "smaller" not in conclusions
    assert "fewer" not in conclusions
    # the lowest-ECE run (b-s0, 0.02) belongs to the configuration with the higher mean ECE
    assert ("- **scratch_cnn (optim.lr=0.001)** is the best calibrated configuration: validation ECE 0.120 ± 0.020 "
            "over 3 seeds (the worst: scratch_cnn (optim.lr=0.01), 0.130 ± 0.165 over 3 seeds); the runner-up, "
            "scratch_cnn (optim.lr=0.01) (0.130 ± 0.165 over 3 seeds), is within the seeds' spread.") in conclusions

    other = tmp_path / "other"
    make_run(other, "r", model="resnet18", f1=0.7, acc=0.7, ece=0.1, synthetic=False, latency=12.0, params=1_000_000,
             spread=(8.0, 16.0))
    make_run(other, "m", model="mobilenet_v3_large", f1=0.6, acc=0.6, ece=0.1, synthetic=False, latency=11.0,
             params=1_050_000, spread=(9.0, 13.0))
    conclusions = build_report(collect_runs([other]), tmp_path / "o.md").split("### Conclusions on", 1)[1]
    assert ("- Inference speed does not separate **resnet18** (12.00 ms/image (repeated timings 8.00-16.00)) from "
            "**mobilenet_v3_large** (11.00 ms/image (repeated timings 9.00-13.00)): their repeated timings overlap "
            "(CPU, batch 1), so neither is called faster.") in conclusions
    assert "parameters" not in conclusions  # 1.00 M against 1.05 M: no size claim


def test_overfitting_check_says_when_train_accuracy_was_measured_on_mixed_batches() -> None:
    from types import SimpleNamespace

    from research.report.conclusions import _overfitting

    history = [{"epoch": 15, "train/acc": 0.60, "val/acc": 0.75}]
    plain = _overfitting(SimpleNamespace(history=history, config={"train.mixup_alpha": 0.0}))
    mixed = _overfitting(SimpleNamespace(history=history, config={"train.mixup_alpha": 0.0, "train.cutmix_alpha": 1.0}))
    assert plain.endswith("so validation is 15.0 points above train (train accuracy is measured on augmented batches).")
    assert mixed.endswith("(train accuracy is measured on augmented batches mixed by mixup/CutMix, so it understates the fit).")


def test_runs_recorded_before_a_key_existed_pool_with_runs_at_its_default():
    """A config key added later (model.drop_path, optim.layer_decay...) is absent from older runs' config.yaml;
    at its default it does not split seeds of one recipe into two groups, and a changed value still does."""
    from research.config import flatten
    from research.report.collect import RunRecord
    from research.report.statistics import config_key

    new = flatten(load_config(None, ["run.seed=1"]))
    old = {k: v for k, v in new.items() if k not in ("model.drop_path", "optim.layer_decay", "model.init_from")}
    changed = {**new, "optim.layer_decay": 0.8}
    assert config_key(RunRecord(run_id="r", config=old)) == config_key(RunRecord(run_id="r", config=new))
    assert config_key(RunRecord(run_id="r", config=changed)) != config_key(RunRecord(run_id="r", config=new))
    assert config_key(RunRecord(run_id="r", config={**new, "optim.lr": 0.5})) != config_key(RunRecord(run_id="r", config=new))
    # runs recorded with data.num_workers=0 (the old default) pool with runs at auto: it changes how a run executes
    assert config_key(RunRecord(run_id="r", config={**new, "data.num_workers": 0})) == config_key(RunRecord(run_id="r", config=new))
    # and the row labels name only what really differs: not a key one run lacks and the other has at its default
    from research.report.statistics import RunGroup, _label

    groups = [RunGroup([RunRecord(run_id=f"{name}-s{i}", model="scratch_cnn", config=config) for i in (1, 2)])
              for name, config in (("old", old), ("changed", changed))]
    _label(groups)
    assert [g.label for g in groups] == ["scratch_cnn (optim.layer_decay=1.0)", "scratch_cnn (optim.layer_decay=0.8)"]


def test_titles_and_headings_say_each_thing_once(tmp_path: Path) -> None:
    """Issue 26, item 18: the demo dataset's name already says synthetic; a run heading names the model and
    the run, not the run twice; two configurations of one model are named alike in every table."""
    root = tmp_path / "runs"
    for run_id, f1, lr in (("scratch_cnn-a", 0.55, "0.001"), ("scratch_cnn-b", 0.45, "0.01")):
        run = make_run(root, run_id, model="scratch_cnn", f1=f1, acc=f1 + 0.05, ece=0.1, synthetic=True, latency=1.0,
                       params=1_000_000)
        run.write_text("config.yaml", to_yaml(load_config(None, ["model.name=scratch_cnn", f"optim.lr={lr}"])))
    add_predictions(RunFolder(root / "scratch_cnn-a"))
    markdown = report_cli([root], tmp_path / "results.md").read_text()
    assert "(SYNTHETIC demo data)" not in markdown and "(SYNTHETIC)" not in markdown
    assert "## Dataset: synthetic demo data (700 train / 200 validation)" in markdown
    for run_id in ("scratch_cnn-a", "scratch_cnn-b"):
        assert f"{run_id} (`{run_id}`)" not in markdown and f"**{run_id}** (`{run_id}`)" not in markdown
        assert f"### scratch_cnn (`{run_id}`)" in section(markdown, "## Per model")
    assert "### scratch_cnn (`scratch_cnn-a`) on `" in section(markdown, "## New images")
    names = ["scratch_cnn (optim.lr=0.001)", "scratch_cnn (optim.lr=0.01)"]
    assert [row.split(" | ")[0].removeprefix("| ") for row in markdown.splitlines() if row.startswith("| scratch_cnn (")][:2] == names
    assert f"| class | val images | {names[0]} | {names[1]} |" in markdown
