"""Model cards: read back from the markdown, every number equal to the run folder's."""

from __future__ import annotations

import json
import re
import shutil

import pytest
import yaml

from research.report import report_cli
from research.report.card import write_model_card

SECTIONS = ("## Model", "## Data", "## Preprocessing", "## Training", "## Metrics", "## Calibration", "## Known weaknesses", "## Intended use and limits")


def _section(card: str, title: str) -> str:
    return card.split(title, 1)[1].split("\n## ", 1)[0]


def test_card_of_a_trained_run(trained_run, tmp_path):
    card = write_model_card(trained_run, tmp_path / "card.md").read_text()
    summary = json.loads((trained_run / "summary.json").read_text())
    assert card.split("\n---\n\n", 1)[1].startswith("# Model card: trained")
    assert [s for s in SECTIONS if s not in card] == []
    assert ("SYNTHETIC demo data." in card) == summary["dataset"]["synthetic"]
    data = _section(card, "## Data")
    counts = summary["dataset"]["class_counts"]
    assert f"{summary['dataset']['train_images']} train / {summary['dataset']['val_images']} validation" in data
    for cls, n in counts["train"].items():
        assert re.search(rf"\| {cls} \| {n} \| {counts['validation'][cls]} \|", data)
    pre = _section(card, "## Preprocessing")
    assert "32x32 px, 1 channel(s) (grayscale)" in pre and "pad to 32 x 32" in pre and "Haar" in pre
    assert "face crop: none during training" in pre and "--face aligned" in pre
    config = yaml.safe_load((trained_run / "config.yaml").read_text())
    recipe = _section(card, "## Training")
    assert f"lr {config['optim']['lr']:g}" in recipe and f"{config['train']['epochs']} epochs planned" in recipe
    assert f"`{config['augment']['preset']}` preset" in recipe
    assert "the training weights of the best epoch" in recipe and "one view per image" in recipe
    metrics = _section(card, "## Metrics")
    assert "**One seed**" in metrics
    for key, name in (("val/acc", "accuracy"), ("val/macro_f1", "macro-F1"), ("val/ece", "ECE"),
                      ("val/loss", "loss (the training criterion"), ("val/nll", "NLL (plain cross-entropy)")):
        assert re.search(rf"\| {re.escape(name)}[^|]* \| {summary['best'][key]:.3f} \|", metrics)
    assert "- training criterion (`loss`): cross-entropy, label smoothing" in recipe
    assert f"ECE {summary['best']['val/ece']:.3f}" in _section(card, "## Calibration")
    weak = _section(card, "## Known weaknesses")
    per_class = {k: v for k, v in json.loads((trained_run / "per_class.json").read_text()).items() if v["support"] > 0}
    weakest, m = min(per_class.items(), key=lambda kv: (kv[1]["f1"], kv[0]))
    assert f"| {weakest} | {m['f1']:.3f} | {m['precision']:.3f} | {m['recall']:.3f} | {int(m['support'])} |" in weak
    confusion = json.loads((trained_run / "confusion_counts.json").read_text())
    names, c = confusion["class_names"], confusion["counts"]
    off = [(c[i][j], i, j) for i in range(len(names)) for j in range(len(names)) if i != j and c[i][j]]
    if off:
        count, i, j = max(off, key=lambda p: (p[0], -p[1], -p[2]))
        assert f"true **{names[i]}** predicted as **{names[j]}**: {count} of {sum(c[i])}" in weak
    limits = _section(card, "## Intended use and limits")
    assert "Not for decisions about people" in limits and "Research and education" in limits


def front_matter(card: str) -> dict:
    """The card's YAML front matter, as the Hugging Face hub reads it."""
    assert card.startswith("---\n")
    return yaml.safe_load(card.split("\n---\n", 1)[0].removeprefix("---\n"))


def test_the_front_matter_holds_the_runs_numbers(trained_run, tmp_path):
    from huggingface_hub import ModelCard

    path = write_model_card(trained_run, tmp_path / "card.md")
    meta = front_matter(path.read_text())
    summary = json.loads((trained_run / "summary.json").read_text())
    assert meta["license"] == "mit" and meta["pipeline_tag"] == "image-classification"
    assert {"image-classification", "facial-expression-recognition", "scratch_cnn_small"} <= set(meta["tags"])
    assert ("synthetic-data" in meta["tags"]) == summary["dataset"]["synthetic"]
    assert meta["datasets"] == [summary["dataset"]["name"]]
    assert meta["metrics"] == ["accuracy", "f1", "top_k_accuracy"]
    [index] = meta["model-index"]
    assert index["name"] == summary["run_id"] == "trained"
    [result] = index["results"]
    assert result["task"]["type"] == "image-classification"
    assert result["dataset"] == {"name": summary["dataset"]["name"], "type": summary["dataset"]["name"], "split": "validation"}
    values = {m["type"]: m["value"] for m in result["metrics"]}
    assert values == {"accuracy": summary["best"]["val/acc"], "f1": summary["best"]["val/macro_f1"],
                      "top_k_accuracy": summary["best"]["val/top2"]}
    card = ModelCard.load(path)  # huggingface_hub's own reader parses it and finds the same results
    assert card.data.license == "mit" and card.data.eval_results[0].metric_value == summary["best"]["val/acc"]


def test_report_writes_linked_cards_with_the_spread_of_seeds(trained_run, tmp_path):
    runs = tmp_path / "runs"
    accuracy = {42: 0.5, 43: 0.7}
    for seed, acc in accuracy.items():
        folder = runs / f"trained-s{seed}"
        shutil.copytree(trained_run, folder, ignore=shutil.ignore_patterns("predictions", "export", "wandb", "evaluations"))
        summary = json.loads((folder / "summary.json").read_text())
        summary["run_id"], summary["seed"], summary["best"]["val/acc"] = folder.name, seed, acc
        (folder / "summary.json").write_text(json.dumps(summary))
        config = yaml.safe_load((folder / "config.yaml").read_text())
        config["run"]["seed"] = seed
        (folder / "config.yaml").write_text(yaml.safe_dump(config))
    out = report_cli([runs], tmp_path / "reports" / "results.md")
    markdown = out.read_text()
    for seed in (42, 43):
        card_path = tmp_path / "reports" / "model_cards" / f"trained-s{seed}.md"
        assert f"](model_cards/trained-s{seed}.md)" in markdown
        card = card_path.read_text()
        metrics = _section(card, "## Metrics")
        assert "over **2 seeds** (42, 43)" in metrics or "over **2 seeds** (43, 42)" in metrics
        row = next(line for line in metrics.splitlines() if line.startswith("| accuracy |"))
        assert row.startswith("| accuracy | 0.600 ± 0.141 |")  # mean and sample std of 0.5 and 0.7
        assert row.endswith(f"| {accuracy[seed]:.3f} |")  # this run's own value


@pytest.mark.parametrize("missing", ["per_class.json", "confusion_counts.json"])
def test_a_card_says_what_the_run_folder_lacks(trained_run, tmp_path, missing):
    folder = tmp_path / "run"
    shutil.copytree(trained_run, folder, ignore=shutil.ignore_patterns("predictions", "export", "wandb", missing))
    card = write_model_card(folder, tmp_path / "card.md").read_text()
    assert f"({missing} missing)" in card
