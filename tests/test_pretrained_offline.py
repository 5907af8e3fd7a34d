"""Pretrained weights on machines without internet: a frozen preset never trains on a random backbone, sweeps
never mix pretrained and random trials, the missing-weights error names every way to provide them, and
``fetch-weights`` prefetches a preset's weights through the libraries' own downloads (faked here: no network)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
import torchvision

from research.cli import fetch_weights_main, sweep_main, train_main
from tests.conftest import FAST

WAYS = ("model.pretrained_file", "TORCH_HOME", "HF_HOME", "HF_HUB_OFFLINE", "fetch-weights")
SMALL = [*FAST[1:], "data.image_size=32", "train.epochs=1"]  # FAST without its model: the preset's


def cli(main, argv: list[str]) -> int:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    return exit_info.value.code


@pytest.fixture()
def offline(monkeypatch):
    """torchvision's and timm's downloads fail as they do without a network."""
    import timm.models._hub as timm_hub

    def no_network(*args, **kwargs):
        raise OSError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torchvision.models.ResNet18_Weights.IMAGENET1K_V1.__class__, "get_state_dict", no_network)
    monkeypatch.setattr(timm_hub, "hf_hub_download", no_network)
    monkeypatch.setenv("TORCH_HOME", "/nonexistent-torch-home")


def _errors(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


def test_the_frozen_preset_offline_without_weights_exits_2_naming_every_way(offline, tiny_dataset, tmp_path, caplog):
    runs = tmp_path / "runs"
    assert cli(train_main, ["--config", "resnet18_frozen", *SMALL, f"data.root={tiny_dataset}", f"run.dir={runs}"]) == 2
    errors = _errors(caplog)
    assert len(errors) == 1 and all(way in errors[0] for way in WAYS), errors
    assert "model.pretrained=false" in errors[0] and "Temporary failure in name resolution" in errors[0]
    assert not runs.exists() or not any(runs.iterdir()), "a failed start left a run folder"


def test_a_frozen_backbone_never_falls_back_to_random_weights(tiny_dataset, tmp_path, caplog):
    argv = ["--config", "resnet18", *SMALL, f"data.root={tiny_dataset}", f"run.dir={tmp_path / 'runs'}", "model.mode=frozen"]
    assert cli(train_main, argv) == 2  # the resnet18 preset sets the fallback; frozen refuses it before any download
    errors = _errors(caplog)
    assert len(errors) == 1 and "model.pretrained_fallback=true with model.mode=frozen" in errors[0]
    assert "Set model.pretrained_fallback=false" in errors[0] and "model.mode=finetune" in errors[0]
    assert not (tmp_path / "runs").exists()


def test_timm_offline_names_every_way_and_the_imagenet_extra(offline, monkeypatch):
    from research.models import backbones, create_model
    from research.models.backbones import PretrainedWeightsError

    monkeypatch.setattr(backbones, "package_weights_file", lambda name: None)  # the imagenet extra not installed
    with pytest.raises(PretrainedWeightsError) as err:
        create_model("timm/tf_efficientnet_lite0", 7, pretrained=True)
    assert all(way in str(err.value) for way in WAYS) and "poetry install --extras imagenet" in str(err.value)


SWEEP = """\
method: grid
metric: {name: val/macro_f1, goal: maximize}
parameters:
  optim.lr: {values: [0.001, 0.0003]}
command: [python, -m, research, train, --config, resnet18, "${args}"]
"""


def test_an_offline_sweep_of_a_pretrained_preset_stops_before_its_first_trial(offline, tiny_dataset, tmp_path, monkeypatch, caplog):
    """The preset's fallback would train each trial from random weights; a sweep turns it off and checks the weights once."""
    monkeypatch.chdir(tmp_path)
    spec = tmp_path / "sweep.yaml"
    spec.write_text(SWEEP)
    assert cli(sweep_main, [str(spec), "--sweep-id", "s", "--count", "2", *SMALL, f"data.root={tiny_dataset}"]) == 2
    errors = _errors(caplog)
    assert len(errors) == 1 and all(way in errors[0] for way in WAYS), errors
    assert not (tmp_path / "runs" / "sweeps" / "s" / "trials").exists()


def test_a_wandb_agent_trial_never_trains_from_random_weights(offline, tiny_dataset, tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("WANDB_SWEEP_ID", "abc123")  # what `wandb agent` sets for the trials it starts
    argv = ["--config", "resnet18", *SMALL, f"data.root={tiny_dataset}", f"run.dir={tmp_path / 'runs'}", "--optim.lr=0.001"]
    assert cli(train_main, argv) == 2
    assert all(way in _errors(caplog)[0] for way in WAYS)
    monkeypatch.delenv("WANDB_SWEEP_ID")
    caplog.clear()  # outside a sweep the preset's fallback still applies: random weights, labelled
    assert cli(train_main, [*argv, "run.name=plain"]) == 0
    assert "model.pretrained_fallback=true" in caplog.text
    assert "none (hub unreachable)" in (tmp_path / "runs" / "plain" / "summary.json").read_text()


def test_fetch_weights_torchvision(tmp_path, monkeypatch, capsys, caplog):
    """The download is faked: torchvision's own get_state_dict, writing the file where torch.hub puts it."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    weights = torchvision.models.ResNet18_Weights.IMAGENET1K_V1
    expected = tmp_path / "torch" / "hub" / "checkpoints" / weights.url.rsplit("/", 1)[-1]

    def download(self, progress=True, check_hash=False, weights_only=False):
        assert check_hash and weights_only
        state = torchvision.models.resnet18().state_dict()
        expected.parent.mkdir(parents=True, exist_ok=True)
        torch.save(state, expected)
        return state

    monkeypatch.setattr(weights.__class__, "get_state_dict", download)
    with caplog.at_level(logging.INFO):
        assert cli(fetch_weights_main, ["--config", "resnet18_frozen"]) == 0
    assert capsys.readouterr().out.splitlines() == [str(expected)]
    assert "TORCH_HOME/hub/checkpoints/" in caplog.text and f"model.pretrained_file=PATH/{expected.name}" in caplog.text
    from research.models import create_model  # and the copied file is what training loads offline

    model = create_model("resnet18", 7, pretrained_file=str(expected))
    assert model.pretrained_source == f"file:{expected}"


def test_fetch_weights_timm(tmp_path, monkeypatch, capsys, caplog):
    """The download is faked one level down: timm asks the Hugging Face hub client, which writes its cache."""
    import timm
    import timm.models._hub as timm_hub
    from huggingface_hub import constants
    from huggingface_hub.errors import EntryNotFoundError

    cache = tmp_path / "hf" / "hub"
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))

    def download(repo_id, filename, revision=None, cache_dir=None, **kwargs):
        if filename.endswith(".safetensors"):
            raise EntryNotFoundError(f"{filename} not in the fake repo")
        folder = cache / f"models--{repo_id.replace('/', '--')}"
        (folder / "refs").mkdir(parents=True, exist_ok=True)
        (folder / "refs" / "main").write_text("0" * 40)
        path = folder / "snapshots" / ("0" * 40) / filename
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(timm.create_model(repo_id.split("/")[1].split(".")[0]).state_dict(), path)
        return str(path)

    monkeypatch.setattr(timm_hub, "hf_hub_download", download)
    with caplog.at_level(logging.INFO):
        assert cli(fetch_weights_main, ["--config", "efficientnet_lite0"]) == 0
    [printed] = capsys.readouterr().out.splitlines()
    assert Path(printed).is_file() and Path(printed).is_relative_to(cache) and printed.endswith("pytorch_model.bin")
    assert "HF_HUB_OFFLINE=1" in caplog.text and "models--timm--tf_efficientnet_lite0" in caplog.text


def test_fetch_weights_of_a_model_without_pretrained_weights(caplog):
    assert cli(fetch_weights_main, ["--config", "scratch_cnn"]) == 2
    assert "model.name=scratch_cnn has no pretrained weights to fetch" in caplog.text
