"""A fake W&B server for the online paths (no server is reachable from the tests).

:class:`FakeServer` stands in for ``wandb sync`` (the subprocess ``sync-runs`` starts: it reads the
offline record with tests/wandb_reader.py, CRCs included, and files its run), for ``wandb.init`` (a
reopened run records what is logged into it, as the real objects ``sync-runs`` builds: ``wandb.Table``,
``wandb.Image``, ``wandb.Artifact``) and for ``wandb.sweep``. Tests read what reached it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.wandb_reader import read_offline_run


@dataclass
class FakeRun:
    id: str
    project: str
    entity: str | None
    logged: list[dict[str, Any]] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)
    artifacts: list[tuple[Any, list[str]]] = field(default_factory=list)
    finished: bool = False

    def log(self, data: dict[str, Any]) -> None:
        self.logged.append(dict(data))

    def log_artifact(self, artifact: Any, aliases: list[str] | None = None) -> None:
        self.artifacts.append((artifact, list(aliases or [])))

    def finish(self, exit_code: int = 0) -> None:
        self.finished = True


class FakeProcess:
    def __init__(self, returncode: int, output: str) -> None:
        self.returncode, self.output, self.pid = returncode, output, -1

    def communicate(self, timeout: float | None = None) -> tuple[str, None]:
        return self.output, None


@dataclass
class FakeServer:
    runs: dict[str, Any] = field(default_factory=dict)  # run id -> its offline record as uploaded (OfflineRun)
    sessions: list[FakeRun] = field(default_factory=list)  # every wandb.init(resume="must")
    sweeps: list[dict[str, Any]] = field(default_factory=list)
    sync_calls: list[list[str]] = field(default_factory=list)

    def install(self, monkeypatch: Any) -> FakeServer:
        import wandb

        from research.tracking import wandb_offline

        monkeypatch.setenv("WANDB_API_KEY", "0" * 40)
        monkeypatch.setattr(wandb, "init", self.init)
        monkeypatch.setattr(wandb, "teardown", lambda *a, **k: None)
        monkeypatch.setattr(wandb, "sweep", self.sweep)
        monkeypatch.setattr(wandb_offline.subprocess, "Popen", self.popen)
        return self

    def popen(self, command: list[str], **kwargs: Any) -> FakeProcess:
        """``wandb sync [--dry-run] FOLDER``: reads the record as the server would; a bad one fails."""
        self.sync_calls.append(list(command))
        folder = Path(command[-1])
        try:
            record = read_offline_run(folder)
        except (AssertionError, ValueError, OSError, StopIteration) as err:
            return FakeProcess(1, f"wandb: ERROR could not read {folder}: {err}\n")
        if "--dry-run" not in command:
            self.runs[record.run_id] = record
            run_file = next(folder.glob("run-*.wandb"))
            run_file.with_name(run_file.name + ".synced").touch()  # what W&B writes after a sync
        return FakeProcess(0, f"wandb: Syncing 1 run(s):\nwandb:   {folder}\n")

    def init(self, *, id: str | None = None, project: str | None = None, entity: str | None = None,
             resume: str | None = None, **kwargs: Any) -> FakeRun:
        import wandb

        if resume == "must" and id not in self.runs:
            raise wandb.errors.CommError(f"run {project}/{id} not found")
        run = FakeRun(id=str(id), project=str(project), entity=entity)
        self.sessions.append(run)
        return run

    def sweep(self, config: dict[str, Any], entity: str | None = None, project: str | None = None,
              prior_runs: list[str] | None = None) -> str:
        missing = [r for r in prior_runs or [] if r not in self.runs]
        assert not missing, f"prior runs not on the server: {missing}"
        self.sweeps.append({"config": config, "entity": entity, "project": project, "prior_runs": list(prior_runs or [])})
        return f"sweep{len(self.sweeps)}"

    def logged(self, run_id: str) -> dict[str, Any]:
        """Every value logged into ``run_id`` after its sync, merged (later sessions win)."""
        out: dict[str, Any] = {}
        for session in (s for s in self.sessions if s.id == run_id):
            for data in session.logged:
                out.update(data)
        return out


# --- the public API (wandb.Api) -------------------------------------------------------------------------
@dataclass
class FakeSweep:
    """``wandb.apis.public.Sweep``'s public attributes."""

    id: str
    name: str
    config: dict[str, Any]
    url: str = ""


@dataclass
class FakeApiRun:
    """``wandb.apis.public.Run``'s public attributes: what ``report --wandb`` reads."""

    id: str
    name: str
    state: str
    config: dict[str, Any]
    summary: dict[str, Any]
    rows: list[dict[str, Any]] = field(default_factory=list)
    sweep: FakeSweep | None = None
    created_at: str = ""

    @property
    def url(self) -> str:
        return f"https://wandb.ai/me/fer-research/runs/{self.id}"

    def scan_history(self) -> list[dict[str, Any]]:
        return [dict(row) for row in self.rows]


@dataclass
class FakeApi:
    """``wandb.Api``: ``runs(path, filters=...)`` honours a state filter and remembers what it was asked."""

    all_runs: list[FakeApiRun]
    asked: list[tuple[str, Any]] = field(default_factory=list)

    def __call__(self, *args: Any, **kwargs: Any) -> FakeApi:  # wandb.Api(timeout=30)
        return self

    def runs(self, path: str, filters: dict[str, Any] | None = None, **kwargs: Any) -> list[FakeApiRun]:
        self.asked.append((path, filters))
        return [r for r in self.all_runs if not filters or all(getattr(r, k) == v for k, v in filters.items())]


def api_run(name: str, *, model: str, f1: float, overrides: tuple[str, ...] = (), state: str = "finished",
            sweep: FakeSweep | None = None, created_at: str = "") -> FakeApiRun:
    """A finished training run as the API returns it: the config and summary this package sends to W&B
    (``flatten(cfg)``, :meth:`RunSummary.to_wandb`) and two history rows."""
    from research.config import flatten, load_config
    from research.tracking.summary import FINISHED, DatasetSummary, RunSummary

    cfg = load_config(None, [f"model.name={model}", "data.root=demo", *overrides])
    summary = RunSummary(run_id=name, status=FINISHED, model=model, dataset=DatasetSummary(root="demo", name="synthetic demo data",
                         synthetic=True, train_images=100, val_images=50), params_total=1_000_000, best_epoch=2, epochs_run=2,
                         best={"val/acc": f1 + 0.05, "val/macro_f1": f1, "val/ece": 0.1, "val/loss": 1.2, "val/nll": 1.1},
                         latency_ms_per_image=2.0, train_seconds=5.0, train_images_per_s=50.0)
    rows = [{"epoch": 1, "train/acc": 0.5, "val/acc": 0.4, "_step": 0}, {"epoch": 2, "train/acc": 0.8, "val/acc": f1 + 0.05, "_step": 1}]
    return FakeApiRun(id=name, name=name, state=state, config=flatten(cfg), summary=summary.to_wandb(), rows=rows,
                      sweep=sweep, created_at=created_at)
