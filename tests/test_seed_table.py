"""benchmarks/seed_table.py: the multi-seed table read back from run folders it was given."""

from __future__ import annotations

import json
from pathlib import Path

from tests.conftest import load_benchmark


def _run(folder: Path, acc: float, f1s: dict[str, tuple[float, int]]) -> None:
    folder.mkdir(parents=True)
    (folder / "summary.json").write_text(json.dumps({"best": {"val/acc": acc}}))
    per_class = {k: {"precision": f, "recall": f, "f1": f, "support": float(n)} for k, (f, n) in f1s.items()}
    (folder / "per_class.json").write_text(json.dumps(per_class))


def test_table_means_stds_and_the_supported_class_macro_f1(tmp_path, capsys):
    # "rare" has 4 validation images: it counts in the macro-F1 of every class, not in the supported one;
    # "absent" has none and counts in neither
    for seed, (acc, big, rare) in enumerate([(0.70, 0.6, 0.0), (0.80, 0.8, 0.5)]):
        _run(tmp_path / f"a-s{seed}", acc, {"big": (big, 100), "other": (0.4, 50), "rare": (rare, 4), "absent": (0.0, 0)})
    _run(tmp_path / "b-s0", 0.60, {"big": (0.5, 100), "other": (0.3, 50), "rare": (0.0, 4), "absent": (0.0, 0)})
    (tmp_path / "b-unfinished").mkdir()  # no per_class.json: not a finished run, left out
    table = load_benchmark("seed_table")
    assert table.main([f"a={tmp_path}/a-s*", f"b={tmp_path}/b-*", "--min-support", "10"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert "macro-F1 (3 classes)" in lines[0] and "(classes with >= 10 val images: 2)" in lines[0]
    row_a = next(line for line in lines if line.startswith("| a |"))
    # acc 0.75 ± 0.071; macro-F1 (0.333, 0.567) -> 0.450 ± 0.165; supported (0.5, 0.6) -> 0.550 ± 0.071
    assert "| 0.750 ± 0.071 | 0.450 ± 0.165 | 0.550 ± 0.071 |" in row_a
    row_b = next(line for line in lines if line.startswith("| b |"))
    assert "| b | b-s0 | 0.600 | 0.267 | 0.400 |" in row_b
    assert "a - b: accuracy +15.0 points, macro-F1 +18.3, supported-class macro-F1 +15.0" in out


def test_bad_arguments_exit_2_with_one_message(tmp_path, capsys):
    table = load_benchmark("seed_table")
    assert table.main(["no-equals-sign"]) == 2
    assert "is not LABEL=GLOB" in capsys.readouterr().err
    assert table.main([f"x={tmp_path}/nothing-*"]) == 2
    assert "no finished run folder" in capsys.readouterr().err
    _run(tmp_path / "a", 0.5, {"big": (0.5, 100)})
    assert table.main([f"x={tmp_path}/a", f"x={tmp_path}/a"]) == 2
    assert "the label 'x' is given twice" in capsys.readouterr().err
