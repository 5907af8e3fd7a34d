"""The whole study in one command: train each model, score new images raw and cropped, report.

``--data demo`` runs offline on a CPU in minutes: generated demo faces for training and
generated demo "new photos" (everything labelled synthetic). With ``--data-dir`` it runs
the same study on a real dataset folder.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from research.config import check_inputs, load_config, parse_overrides
from research.predict import new_images_step
from research.report import report_cli
from research.train import train

log = logging.getLogger(__name__)

DEMO_EPOCHS = 4
# On demo data every model runs at 64x64 so the three-model study fits in a few CPU minutes.
DEMO_OVERRIDES = ("data.image_size=64",)


@dataclass
class PipelineResult:
    report: Path
    runs: dict[str, str] = field(default_factory=dict)  # preset -> run folder
    failed: dict[str, str] = field(default_factory=dict)  # preset -> error

    @property
    def ok(self) -> bool:
        return not self.failed and bool(self.runs)


def run_pipeline(
    *,
    data_dir: str | None,
    images: Path | None,
    models: Sequence[str],
    epochs: int | None,
    runs_dir: Path,
    out: Path,
    overrides: Sequence[str] = (),
) -> PipelineResult:
    """Train every preset in ``models`` on the same data; a failing model is reported, the rest go on.

    Every preset's config and inputs are checked before the first model trains.
    """
    demo = data_dir is None
    runs_dir = Path(runs_dir)
    demo_images = demo and images is None
    if demo_images:
        images = runs_dir / "demo-new-images"
    user = parse_overrides(overrides)
    base = [f"data.root={'demo' if demo else data_dir}", f"run.dir={runs_dir}", "model.pretrained_fallback=true"]
    if demo:
        base += list(DEMO_OVERRIDES)
        epochs = epochs or DEMO_EPOCHS
    if epochs:
        base.append(f"train.epochs={epochs}")
    if images is not None:
        base.append(f"run.new_images={images}")
    configs = {preset: load_config(preset, [*base, *user]) for preset in models}
    if demo_images:
        from research.data.demo import write_demo_new_images

        write_demo_new_images(images)
        log.info("generated SYNTHETIC demo new images in %s", images)
    for cfg in configs.values():
        check_inputs(cfg)
    result = PipelineResult(report=Path(out))
    for index, (preset, cfg) in enumerate(configs.items(), start=1):
        log.info("=== pipeline model %d/%d: %s ===", index, len(models), preset)
        try:
            after_fit = new_images_step(cfg.run.new_images) if cfg.run.new_images else None
            summary = train(cfg, command=f"poetry run pipeline (model {preset})", after_fit=after_fit)
            result.runs[preset] = summary.run_dir
        except KeyboardInterrupt:
            raise
        except Exception as err:  # one broken model must not sink the study
            log.exception("model %s failed: %s", preset, err)
            result.failed[preset] = f"{type(err).__name__}: {err}"
    if not result.runs:
        raise RuntimeError(f"every model failed: {result.failed}")
    result.report = report_cli([Path(p) for p in result.runs.values()], Path(out), include_new_image_figures=True)
    if result.failed:
        log.error("finished with failures: %s", result.failed)
    log.info("study done: %d model(s) trained, report %s", len(result.runs), result.report)
    return result
