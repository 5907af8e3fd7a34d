"""Statistics in the report: repeated runs grouped per configuration (mean ± std over seeds),
bootstrap confidence intervals, McNemar's paired test and the per-class F1 table.

Run folders are written by hand with known per-image validation predictions (through the
package's own writer), so every number below can be worked out on paper.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pytest

from research.cli import train_main
from research.config import load_config, to_yaml
from research.data.classes import CANONICAL_CLASSES
from research.inference.evaluation import evaluate_scores, write_predictions
from research.report import report_cli
from research.tracking.runs import RunFolder, read_json, write_json
from tests.conftest import FAST
from tests.test_report import make_run, row_cells, section, table_rows

# 70 validation images: 14 anger, 6 disgust, 10 of every other class, in this fixed order.
TARGETS = np.array([0] * 14 + [1] * 6 + [c for c in range(2, 7) for _ in range(10)])
SECTION = "## Dataset: dataset_emociones"


def write_run(root: Path, run_id: str, *, seed: int, lr: float, wrong: set[int], model: str = "resnet18") -> RunFolder:
    """A finished run whose validation predictions are right except on the images ``wrong``;
    summary, per_class.json and val_predictions.npz all come from those predictions."""
    preds = np.array([(t + 1) % 7 if i in wrong else t for i, t in enumerate(TARGETS)])
    evaluation = evaluate_scores(np.eye(7)[preds], TARGETS, list(CANONICAL_CLASSES), from_logits=False)
    run = make_run(
        root, run_id, model=model, f1=evaluation.metrics["macro_f1"], acc=evaluation.metrics["acc"],
        ece=0.05, synthetic=False, latency=5.0, params=11_000_000,
    )  # fmt: skip
    run.write_text("config.yaml", to_yaml(load_config(None, [f"model.name={model}", f"optim.lr={lr}", f"run.seed={seed}", f"run.name={run_id}"])))
    summary = run.read_summary()
    summary.update(seed=seed)
    summary["dataset"]["val_images"] = len(TARGETS)
    run.write_summary(summary)
    write_json(run.path / "per_class.json", evaluation.per_class)
    write_predictions(evaluation, run.val_predictions)
    return run


def acc(wrong: set[int]) -> float:
    return 1 - len(wrong) / len(TARGETS)


# The best run of the lr=1e-3 configuration and the lr=1e-2 run disagree on 12 images:
# 10 only the first gets right (10..19), 2 only the second (0, 1).
BEST_A = {0, 1, 2, 3}
SEEDS_A = {42: BEST_A, 43: BEST_A | {20, 21}, 44: BEST_A | {20, 21, 22}}
RUN_B = {2, 3, *range(10, 20)}


@pytest.fixture
def repeated(tmp_path: Path) -> Path:
    root = tmp_path / "runs"
    for seed, wrong in SEEDS_A.items():
        write_run(root, f"r18-s{seed}", seed=seed, lr=1e-3, wrong=wrong)
    write_run(root, "r18-lr-s42", seed=42, lr=1e-2, wrong=RUN_B)
    return root


def test_repeated_runs_share_a_row_with_mean_std_and_a_deterministic_ci(repeated: Path, tmp_path: Path) -> None:
    markdown = report_cli([repeated], tmp_path / "a" / "results.md").read_text()
    real = section(markdown, SECTION)
    group = table_rows(real, "resnet18 (optim.lr=0.001)")
    assert len(group) == 1  # three seeds of one config: one row
    cells = row_cells(real, "resnet18 (optim.lr=0.001)")
    assert cells["run"] == "`r18-s42`, `r18-s43`, `r18-s44`"
    assert cells["n seeds"] == "3"
    accs = [acc(w) for w in SEEDS_A.values()]
    mean, std = np.mean(accs), np.std(accs, ddof=1)
    assert cells["val acc"] == f"{mean:.3f} ± {std:.3f}"  # mean ± sample std
    # The other learning rate is another configuration: its own row, one run, its value as is.
    single = table_rows(real, "resnet18 (optim.lr=0.01)")
    assert len(single) == 1 and "`r18-lr-s42`" in single[0]
    single_cells = row_cells(real, "resnet18 (optim.lr=0.01)")
    assert single_cells["n seeds"] == "1" and single_cells["val acc"] == f"{acc(RUN_B):.3f}"
    # Bootstrap 95% CI of the accuracy: contains the group's mean and is the same in a second report.
    low, high = map(float, re.fullmatch(r"\[(\S+), (\S+)\]", cells["acc 95% CI"]).groups())
    assert low < mean < high and high - low < 0.2
    assert re.fullmatch(r"\[\S+, \S+\]", cells["macro-F1 95% CI"])
    again = report_cli([repeated], tmp_path / "b" / "results.md").read_text()
    assert table_rows(section(again, SECTION), "resnet18 (optim.lr=0.001)") == group
    assert "1000 resamples, seed 0" in real and "per run, then averaged; not pooled" in real


def test_paired_test_quotes_the_discordant_images_and_p_value(repeated: Path, tmp_path: Path) -> None:
    markdown = report_cli([repeated], tmp_path / "results.md").read_text()
    conclusions = section(markdown, SECTION).split("### Conclusions on", 1)[1]
    # Exact McNemar by hand: 12 discordant images, 2 on the rarer side; p = 2 * P(X <= 2), X ~ Bin(12, 1/2).
    p = 2 * (1 + 12 + 66) / 2**12
    assert f"p = {p:.3g}" == "p = 0.0386"
    assert (
        "- Paired test of **resnet18 (optim.lr=0.001)** vs **resnet18 (optim.lr=0.01)** on the same 70 validation images "
        "(McNemar's exact test; for repeated runs, on the best seed of each): only resnet18 (optim.lr=0.001) "
        "is right on 10 image(s), only resnet18 (optim.lr=0.01) on 2; p = 0.0386, so the difference is significant at the 5% level."
    ) in conclusions
    assert "with 0.916 ± 0.022 (mean ± std over 3 seeds; accuracy 0.919 ± 0.022)" in conclusions


def test_close_runs_are_not_significant(tmp_path: Path) -> None:
    root = tmp_path / "runs"
    write_run(root, "resnet18-a", seed=42, lr=1e-3, wrong={0, 1, 2, 3, 4})
    write_run(root, "mobilenet-b", seed=42, lr=1e-3, wrong={0, 1, 5, 6, 7, 8}, model="mobilenet_v3_large")
    conclusions = report_cli([root], tmp_path / "results.md").read_text()
    # Only resnet18 is right on images 5..8, only mobilenet on 2..4: p = min(1, 2 * P(X <= 3)), X ~ Bin(7, 1/2).
    p = min(1.0, 2 * sum(math.comb(7, k) for k in range(4)) / 2**7)
    assert p >= 0.05
    assert (
        f"only resnet18 is right on 4 image(s), only mobilenet_v3_large on 3; p = {p:.3g}, so the "
        "difference is not significant at the 5% level (it may be chance)."
    ) in conclusions


def test_runs_without_predictions_get_no_paired_test(repeated: Path, tmp_path: Path) -> None:
    (repeated / "r18-lr-s42" / "val_predictions.npz").unlink()
    markdown = report_cli([repeated], tmp_path / "results.md").read_text()
    real = section(markdown, SECTION)
    assert "- **resnet18 (optim.lr=0.001)** vs **resnet18 (optim.lr=0.01)**: no paired test (predictions not saved)." in real
    single = row_cells(real, "resnet18 (optim.lr=0.01)")
    assert single["acc 95% CI"] == single["macro-F1 95% CI"] == "n/a"
    assert "n/a: no per-image validation predictions" in real


def test_per_class_table_has_supports_and_each_configuration(repeated: Path, tmp_path: Path) -> None:
    markdown = report_cli([repeated], tmp_path / "results.md").read_text()
    table = section(markdown, SECTION).split("### Per-class F1 on dataset_emociones", 1)[1].split("###", 1)[0]
    # every configuration of a shared model is named the same way: the model and what sets it apart (issue 26, item 18)
    assert "| class | val images | resnet18 (optim.lr=0.001) | resnet18 (optim.lr=0.01) |" in table
    rows = {line.split(" | ")[0].removeprefix("| "): line for line in table.splitlines() if line.startswith("| ") and "---" not in line}
    assert list(rows)[1:] == list(CANONICAL_CLASSES)
    assert rows["anger"].startswith("| anger | 14 | ")
    assert rows["disgust"].startswith("| disgust | 6 | ")
    assert rows["surprise"].startswith("| surprise | 10 | ")
    f1_b = read_json(repeated / "r18-lr-s42" / "per_class.json")["disgust"]["f1"]
    assert rows["disgust"].endswith(f" | {f1_b:.3f} |")
    assert " ± " in rows["anger"].split(" | ")[2]  # mean ± std over the three seeds


def test_train_seeds_makes_one_run_per_seed(tiny_dataset: Path, tmp_path: Path, capsys) -> None:
    runs = tmp_path / "runs"
    with pytest.raises(SystemExit) as exit_info:
        train_main(["--seeds", "2", *FAST, f"data.root={tiny_dataset}", f"run.dir={runs}", "run.name=rep"])
    assert exit_info.value.code == 0
    printed = capsys.readouterr().out.split()
    assert printed == [str(runs / "rep-s42"), str(runs / "rep-s43")]
    targets = []
    for seed in (42, 43):
        run = RunFolder(runs / f"rep-s{seed}")
        summary = run.read_summary()
        assert summary["seed"] == seed and summary["status"] == "finished"
        with np.load(run.val_predictions) as saved:
            assert len(saved["targets"]) == len(saved["preds"]) == len(saved["probs"]) == summary["dataset"]["val_images"]
            targets.append(saved["targets"])
    assert np.array_equal(*targets)  # the validation set is scored in one fixed order
    markdown = report_cli([runs], tmp_path / "results.md").read_text()
    row = row_cells(markdown, "scratch_cnn_small")
    assert row["run"] in ("`rep-s42`, `rep-s43`", "`rep-s43`, `rep-s42`")
    assert row["n seeds"] == "2" and " ± " in row["val acc"] and row["acc 95% CI"].startswith("[")


def test_a_failing_seed_does_not_stop_the_others(tiny_dataset: Path, tmp_path: Path, capsys, caplog) -> None:
    runs = tmp_path / "runs"
    (runs / "rep-s42").mkdir(parents=True)
    (runs / "rep-s42" / "last.pt").write_bytes(b"")  # an earlier run holds seed 42's folder
    with pytest.raises(SystemExit) as exit_info:
        train_main(["--seeds", "2", *FAST, f"data.root={tiny_dataset}", f"run.dir={runs}", "run.name=rep"])
    assert exit_info.value.code == 1
    assert capsys.readouterr().out.split() == [str(runs / "rep-s42"), str(runs / "rep-s43")]
    assert "1 of 2 seed(s) failed: seed 42: RunExistsError: run folder" in caplog.text
    assert RunFolder(runs / "rep-s43").read_summary()["status"] == "finished"
    assert (runs / "rep-s42" / "last.pt").read_bytes() == b""  # the earlier run is untouched
