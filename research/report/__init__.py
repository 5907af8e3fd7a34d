"""The markdown comparison report of trained runs: ``poetry run report``.

``report_cli([Path("runs")], Path("reports/results.md"))`` collects runs (:mod:`.collect`,
run folders or the W&B API, both through the typed run summary), groups repeated runs of one
configuration and computes their spread, bootstrap intervals and paired tests (:mod:`.statistics`),
computes the conclusions (:mod:`.conclusions`) and renders the markdown with its figures (:mod:`.render`) under
``<out parent>/figures/``; every link is relative, so the report renders on GitHub. The same
inputs give the same report, except for the line with the generation time.

Runs are compared only with runs on the same dataset (one section per dataset); sweeps are
summarised per sweep. ``compare_across_datasets=True`` ranks all single runs together.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from research.errors import check_writable
from research.report.collect import (
    NoRunsError,
    RunRecord,
    RunSet,
    SweepRecord,
    WandbReportError,
    collect_runs,
    collect_wandb_runs,
    load_run_record,
    skipped_text,
    wandb_log,
)
from research.report.conclusions import conclusions
from research.report.render import DEFAULT_TITLE, SYNTHETIC_LABEL, build_report, write_report

__all__ = [
    "DEFAULT_TITLE", "SYNTHETIC_LABEL", "NoRunsError", "RunRecord", "RunSet", "SweepRecord", "WandbReportError", "build_report",
    "collect_runs", "collect_wandb_runs", "conclusions", "load_run_record", "report_cli", "wandb_log", "write_report",
]

log = logging.getLogger(__name__)


def report_cli(
    run_paths: Sequence[Path],
    out: Path,
    *,
    wandb_path: str | None = None,
    title: str = DEFAULT_TITLE,
    include_new_image_figures: bool = True,
    compare_across_datasets: bool = False,
) -> Path:
    """``poetry run report``: collect runs (folders, or W&B with ``wandb_path``), write the markdown."""
    out = Path(out)
    check_writable(out.parent)
    run_set = collect_wandb_runs(wandb_path) if wandb_path else collect_runs(run_paths)
    markdown = build_report(
        run_set, out, title=title, include_new_image_figures=include_new_image_figures,
        compare_across_datasets=compare_across_datasets,
    )
    write_report(markdown, out)
    log.info(
        "report on %d run(s) and %d sweep(s) written to %s (figures in %s)%s",
        len(run_set.runs),
        len(run_set.sweeps),
        out,
        out.parent / "figures",
        f"; skipped {skipped_text(run_set.skipped)}" if run_set.skipped else "",
    )
    return out
