"""Training composed with inference: one run with its new-image step, many runs with one failure
policy, and the whole study in one command.

- :func:`train_with_new_images`: :func:`research.train.train` plus, when ``run.new_images`` is set,
  the new-image predictions of the finished run (``train`` itself never imports inference's
  ``predict``; this is the one place the two are put together).
- :func:`train_many`: the one loop that trains several configurations (``train --seeds``, the
  pipeline's models, the local sweep's trials) with one failure policy.
- :func:`run_pipeline`: ``poetry run pipeline``. ``--data demo`` runs offline on a CPU in minutes:
  generated demo faces for training and generated demo "new photos" (everything labelled synthetic).
  With ``--data-dir`` it runs the same study on a real dataset folder.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from research.config import ConfigError, check_inputs, load_config, parse_overrides, validate
from research.errors import UserError
from research.inference.predict import new_images_step
from research.report import report_cli
from research.tracking.runs import new_run_id
from research.tracking.summary import RunSummary
from research.train import train

log = logging.getLogger(__name__)

DEMO_EPOCHS = 4
# On demo data every model runs at 64x64 so the three-model study fits in a few CPU minutes.
DEMO_OVERRIDES = ("data.image_size=64",)


EpochCallback = Callable[[dict[str, float]], bool]


def train_with_new_images(cfg: DictConfig, *, command: str | None = None, on_epoch: EpochCallback | None = None) -> RunSummary:
    """One training run; with ``run.new_images`` its finished model also scores that folder (raw and
    Haar-cropped, into the run's ``predictions/`` and its W&B run)."""
    after_fit = new_images_step(cfg.run.new_images) if cfg.run.new_images else None
    return train(cfg, command=command, on_epoch=on_epoch, after_fit=after_fit)


@dataclass
class Job:
    """One configuration for :func:`train_many`: a label for messages (``seed 43``, a preset, a trial)."""

    label: str
    cfg: DictConfig
    command: str | None = None
    on_epoch: EpochCallback | None = None

    @property
    def run_dir(self) -> Path:
        return Path(self.cfg.run.resume) if self.cfg.run.resume else Path(self.cfg.run.dir) / str(self.cfg.run.name)


@dataclass
class JobResult:
    """What one :class:`Job` gave: its summary, or the error that ended it (``interrupted`` after Ctrl-C)."""

    job: Job
    summary: RunSummary | None = None
    error: str | None = None
    interrupted: bool = False

    @property
    def run_dir(self) -> Path:
        return Path(self.summary.run_dir) if self.summary is not None else self.job.run_dir


def train_many(jobs: Iterable[Job], *, on_result: Callable[[JobResult], None] | None = None) -> list[JobResult]:
    """Train each job in turn (``jobs`` may be a generator that looks at the results so far) with one
    failure policy:

    - a :class:`~research.config.ConfigError` stops the loop: it is the configuration's, so every
      other job would fail the same way;
    - Ctrl-C (and any other ``BaseException``) stops it after ``on_result`` has seen the job as interrupted;
    - any other error fails that job only and the next one runs: a user error is logged in one line,
      a bug with its traceback.

    ``on_result`` sees every job's result as soon as it is known (a sweep records its trial there).
    """
    results: list[JobResult] = []
    for job in jobs:
        result = JobResult(job)
        try:
            result.summary = train_with_new_images(job.cfg, command=job.command, on_epoch=job.on_epoch)
        except ConfigError:
            raise
        except Exception as err:
            result.error = f"{type(err).__name__}: {err}"
            if isinstance(err, UserError):
                log.error("%s failed: %s", job.label, err)
            else:
                log.exception("%s failed (a bug; the next one runs): %s", job.label, err)
        except BaseException:
            result.error, result.interrupted = "interrupted", True
            if on_result is not None:
                on_result(result)
            raise
        results.append(result)
        if on_result is not None:
            on_result(result)
    return results


def seed_configs(cfg: DictConfig, seeds: int) -> list[DictConfig]:
    """``seeds`` copies of ``cfg`` that differ only in ``run.seed`` (``run.seed``, ``run.seed + 1``, ...)
    and ``run.name`` (``<run.name or model-time>-s<seed>``): repeated runs of one configuration."""
    if seeds < 1:
        raise ConfigError(f"--seeds must be >= 1, got {seeds}")
    if cfg.run.resume:
        raise ConfigError("--seeds starts new runs; resume each run on its own with run.resume=<run folder>")
    base = cfg.run.name or new_run_id(cfg.model.name, Path(cfg.run.dir))
    configs = []
    for seed in range(cfg.run.seed, cfg.run.seed + seeds):
        one = OmegaConf.merge(cfg, {"run": {"seed": seed, "name": f"{base}-s{seed}"}})
        validate(one)
        configs.append(one)
    return configs


def train_seeds(cfg: DictConfig, seeds: int, *, command: str | None = None) -> list[JobResult]:
    """Train the same configuration once per seed (:func:`seed_configs`); inputs are checked once up
    front, then :func:`train_many`'s policy applies (a failed seed does not cost the others)."""
    configs = seed_configs(cfg, seeds)
    check_inputs(cfg)
    return train_many(Job(f"seed {one.run.seed} ({Path(one.run.dir) / one.run.name})", one, command) for one in configs)


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
    jobs = [Job(preset, cfg, f"poetry run pipeline (model {preset})") for preset, cfg in configs.items()]
    for done in train_many(_announced(jobs)):
        if done.summary is not None:
            result.runs[done.job.label] = done.summary.run_dir
        else:
            result.failed[done.job.label] = str(done.error)
    if not result.runs:
        raise PipelineError(f"every model failed: {'; '.join(f'{k}: {v}' for k, v in result.failed.items())}")
    result.report = report_cli([Path(p) for p in result.runs.values()], Path(out), include_new_image_figures=True)
    if result.failed:
        log.error("finished with failures: %s", result.failed)
    log.info("study done: %d model(s) trained, report %s", len(result.runs), result.report)
    return result


def _announced(jobs: list[Job]) -> Iterable[Job]:
    for index, job in enumerate(jobs, start=1):
        log.info("=== pipeline model %d/%d: %s ===", index, len(jobs), job.label)
        yield job


class PipelineError(UserError):
    """No model of the study could be trained (each failure was logged above)."""
