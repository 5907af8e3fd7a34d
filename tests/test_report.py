"""The markdown report: tables, honest labels, computed conclusions, links that resolve.

Run folders are written by hand (no training), so these tests take about a second.
"""

from __future__ import annotations

import re
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import pytest
from PIL import Image

from research import report
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
    "curves_loss.png", "curves_acc.png", "curves_macro_f1.png",
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
) -> RunFolder:
    """A run folder with the files the trainer writes (numbers chosen by the test)."""
    run = RunFolder(root / run_id)
    run.path.mkdir(parents=True)
    run.write_text("config.yaml", to_yaml(load_config(None, [f"model.name={model}"])))
    run.write_history(
        [
            {"epoch": 1, "train/loss": 1.8, "train/acc": 0.4, "val/loss": 1.7, "val/acc": 0.45, "lr": 1e-3},
            {"epoch": 2, "train/loss": 0.6, "train/acc": final_train_acc, "val/loss": 1.0, "val/acc": acc, "lr": 1e-4},
        ]
    )  # fmt: skip
    summary: dict[str, Any] = {
        "run_id": run_id, "status": status, "model": model,
        "dataset": {
            "root": "demo" if synthetic else "data/dataset_emociones",
            "name": "synthetic demo data" if synthetic else "dataset_emociones",
            "synthetic": synthetic, "train_images": 700, "val_images": 200,
        },
        "pretrained": "none" if synthetic else "torchvision hub", "mode": "finetune",
        "class_names": list(CANONICAL_CLASSES), "params_total": params, "params_trainable": params,
        "seed": 7, "git_commit": "abc1234", "command": f"poetry run train --config {model}",
        "created": "2026-01-02T03:04:05", "env": {"python": "3.11.7", "torch": "2.5.0", "device": "cpu"},
        "image_size": 64, "best_epoch": 2, "epochs_run": 2, "monitor": "val/macro_f1",
        "best": best_metrics(acc, f1, ece), "final": best_metrics(acc, f1, ece),
        "train_seconds": 12.5, "train_images_per_s": 112.0, "latency_ms_per_image": latency,
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
    from research.predict import compare_modes

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


def test_comparison_table_in_order_with_synthetic_label(runs_root: Path, tmp_path: Path) -> None:
    out = report_cli([runs_root], tmp_path / "reports" / "results.md")
    markdown = out.read_text()
    lines = markdown.splitlines()
    resnet = lines.index(table_rows(markdown, "resnet18")[0])
    scratch = lines.index(table_rows(markdown, "scratch_cnn")[0])
    assert resnet < scratch  # best validation macro-F1 first
    assert "| 0.750 | 0.850 | 0.700 | 0.720 |" in lines[resnet]
    assert "11.00 / 11.00" in lines[resnet] and "torchvision hub" in lines[resnet]
    assert "(SYNTHETIC)" in lines[scratch] and "(SYNTHETIC)" not in lines[resnet]
    # The honest label sits above the comparison table, the conclusions and the new-image table.
    for section in ("## Comparison", "## Conclusions", "## New images"):
        body = markdown.split(section, 1)[1].split("\n## ", 1)[0]
        assert SYNTHETIC_LABEL in body, section
    assert "- Runs compared: 2" in markdown
    assert "`scratch_cnn-20260101-000000` (scratch_cnn): none" in markdown


def test_conclusions_are_computed_from_the_numbers(runs_root: Path, tmp_path: Path) -> None:
    markdown = report_cli([runs_root], tmp_path / "results.md").read_text()
    conclusions = markdown.split("## Conclusions", 1)[1].split("\n## ", 1)[0]
    assert "Best model by validation macro-F1: **resnet18** with 0.700" in conclusions
    assert "15.0 points above the runner-up scratch_cnn (0.550)" in conclusions
    assert "Fastest at inference: **scratch_cnn** at 3.00 ms/image" in conclusions
    assert "it gives up 15.0 points of macro-F1 (0.550 vs 0.700)" in conclusions
    assert "Best calibrated (lowest validation ECE): **resnet18**, ECE 0.050" in conclusions
    assert "true **fear** predicted as **sadness** in 6 of 16 fear validation images" in conclusions
    assert "weakest class: **disgust**, F1 0.333" in conclusions
    assert (
        "accuracy 0.667 raw (3 labelled) vs 1.000 cropped (3 labelled): the crop helped (+33.3 points)"
        in conclusions
    )
    assert "the crop fixed 1 and broke 0" in conclusions
    assert "no face found in 1 of 3 image(s)" in conclusions
    assert (
        "train accuracy 0.950 vs validation 0.750, train 20.0 points above validation"
        in conclusions
    )
    assert "Caution: the runs used 2 different datasets" in conclusions


def test_every_link_resolves_relative_to_the_markdown(runs_root: Path, tmp_path: Path) -> None:
    out = report_cli([runs_root], tmp_path / "reports" / "results.md")
    markdown = out.read_text()
    links = re.findall(r"\]\(([^)]+)\)", markdown)
    assert len(links) >= 2 * len(FIGURES) + 2  # per-run figures, chart, sheets, configs
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
    assert "| model | run | x |" in section
    assert "| resnet18 | `resnet18-20260101-000000` | 0.650 / 0.600 (n=40) |" in section
    assert "scratch_cnn" not in section  # no evaluation: no row


def test_unfinished_runs_are_listed_as_skipped(runs_root: Path, tmp_path: Path) -> None:
    run_set = collect_runs([runs_root])
    assert [r.run_id for r in run_set.runs] == [
        "resnet18-20260101-000000",
        "scratch_cnn-20260101-000000",
    ]
    markdown = build_report(run_set, tmp_path / "results.md")
    assert "Skipped runs (not finished): `mobilenet_v3_small-20260101-000000` (running)" in markdown
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
    assert "20.0 points above the runner-up scratch_cnn (0.400)" in markdown
    assert SYNTHETIC_LABEL in markdown
    assert "https://wandb.ai/me/fer-research/runs/b" in markdown
