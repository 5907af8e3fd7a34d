"""The trainer end to end on tiny synthetic data: run folder, resume, determinism, NaN, stopping."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
import torch

from research.config import load_config
from research.engine.trainer import NonFiniteLossError
from research.tracking.runs import HISTORY_COLUMNS, RunFolder
from research.train import train
from tests.conftest import FAST, interrupt_after_epoch


def cfg_for(root: Path, runs: Path, *extra: str):
    return load_config(None, [*FAST, f"data.root={root}", f"run.dir={runs}", *extra])


def test_one_epoch_run_folder_is_complete(tmp_path, tiny_dataset):
    summary = train(cfg_for(tiny_dataset, tmp_path, "run.name=r1"))
    run = Path(summary.run_dir)
    for name in ("config.yaml", "history.csv", "summary.json", "best.pt", "last.pt", "classification_report.txt",
                 "confusion_counts.json", "per_class.json"):
        assert (run / name).is_file(), name
    for fig in ("curves_loss", "curves_acc", "curves_top2", "curves_macro_f1", "confusion_counts", "confusion_normalized", "reliability"):
        assert (run / "figures" / f"{fig}.png").stat().st_size > 1000, fig
    with (run / "history.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 1 and set(HISTORY_COLUMNS) <= set(rows[0])
    saved = json.loads((run / "summary.json").read_text())
    assert saved["status"] == "finished" and saved["epochs_run"] == 1
    for key in ("params_total", "params_trainable", "train_seconds", "train_images_per_s", "latency_ms_per_image"):
        assert saved[key] > 0, key
    assert set(saved["best"]) >= {"val/acc", "val/top2", "val/macro_f1", "val/weighted_f1", "val/loss", "val/ece"}
    assert 0 <= saved["best"]["val/acc"] <= saved["best"]["val/top2"] <= 1
    assert "precision" in (run / "classification_report.txt").read_text()
    ckpt = torch.load(run / "best.pt", weights_only=True)
    assert ckpt["class_names"][0] == "anger" and ckpt["config"]["model"]["name"] == "scratch_cnn_small"
    # best.pt: the weights and what inference needs; last.pt: everything resume needs
    assert {"model", "mean", "std", "class_names", "config"} <= set(ckpt)
    assert not {"optimizer", "scheduler", "trainer"} & set(ckpt)
    assert {"optimizer", "scheduler", "trainer", "mean", "std"} <= set(torch.load(run / "last.pt", weights_only=True))
    assert summary.dataset.synthetic is False and summary.dataset.train_images > 0


def _history(run_dir: Path) -> list[dict[str, float]]:
    return [{k: v for k, v in r.items() if k != "epoch_seconds"} for r in RunFolder(run_dir).read_history()]


def test_same_seed_same_history(tmp_path, tiny_dataset):
    a = train(cfg_for(tiny_dataset, tmp_path, "run.name=a", "train.epochs=2", "augment.preset=strong"))
    b = train(cfg_for(tiny_dataset, tmp_path, "run.name=b", "train.epochs=2", "augment.preset=strong"))
    assert _history(Path(a.run_dir)) == _history(Path(b.run_dir))


def test_resume_equals_uninterrupted(tmp_path, tiny_dataset, monkeypatch):
    from research.cli import resolve_train_config

    extra = ("train.epochs=3", "augment.preset=medium", "data.sampler=balanced")
    full = train(cfg_for(tiny_dataset, tmp_path, "run.name=full", *extra))

    stop_interrupting = interrupt_after_epoch(monkeypatch, 2)
    with pytest.raises(KeyboardInterrupt):
        train(cfg_for(tiny_dataset, tmp_path, "run.name=cut", *extra))
    cut = tmp_path / "cut"
    assert RunFolder(cut).read_summary()["status"] == "interrupted"
    assert torch.load(cut / "last.pt", weights_only=True)["trainer"]["epoch"] == 2
    stop_interrupting()

    resumed = train(resolve_train_config(None, [f"run.resume={cut}"]))
    assert resumed.status == "finished" and resumed.epochs_run == 3
    assert _history(cut) == _history(Path(full.run_dir))


def test_nan_loss_stops_with_clear_error(tmp_path, tiny_dataset):
    with pytest.raises(NonFiniteLossError, match="optim.lr"):
        train(cfg_for(tiny_dataset, tmp_path, "run.name=nan", "optim.lr=1e30", "optim.warmup_epochs=0", "train.epochs=2"))
    assert RunFolder(tmp_path / "nan").read_summary()["status"] == "failed"


def test_early_stopping_and_options(tmp_path, tiny_dataset):
    summary = train(cfg_for(
        tiny_dataset, tmp_path, "run.name=es", "train.epochs=6", "train.early_stopping_patience=1", "optim.lr=1e-9",
        "optim.warmup_epochs=0", "optim.name=sgd", "optim.scheduler=step", "train.label_smoothing=0.1",
        "train.class_weighting=balanced", "train.grad_clip=1.0", "train.monitor=val/loss",
    ))
    assert summary.epochs_run < 6 and summary.stopped_early_by == "early_stopping"


def test_frozen_then_unfreeze(tmp_path, tiny_dataset):
    summary = train(cfg_for(
        tiny_dataset, tmp_path, "run.name=fz", "model.name=resnet18", "data.channels=3", "model.mode=frozen",
        "model.unfreeze_epoch=1", "train.epochs=2",
    ))
    assert summary.params_trainable < summary.params_total
    ckpt = torch.load(Path(summary.run_dir) / "last.pt", weights_only=True)
    assert ckpt["frozen"] is False


def test_existing_run_name_is_refused(tmp_path, tiny_dataset):
    train(cfg_for(tiny_dataset, tmp_path, "run.name=dup"))
    with pytest.raises(FileExistsError, match="run.resume"):
        train(cfg_for(tiny_dataset, tmp_path, "run.name=dup"))


def test_demo_data_run_is_labelled_synthetic(tmp_path):
    summary = train(load_config(None, [*FAST, "data.root=demo", "data.demo_scale=0.05", f"run.dir={tmp_path}"]))
    assert summary.dataset.synthetic is True and summary.dataset.name == "synthetic demo data"
    assert "synthetic demo data" in (Path(summary.run_dir) / "classification_report.txt").read_text()


def test_train_cli_help_and_bad_key(capsys):
    from research.cli import train_main

    with pytest.raises(SystemExit) as e:
        train_main(["--help"])
    assert e.value.code == 0 and "run.resume" in capsys.readouterr().out
    with pytest.raises(SystemExit) as e:
        train_main(["optim.lrr=1"])
    assert e.value.code == 2


def test_dataloader_workers_are_seeded(tmp_path, tiny_dataset):
    """With worker processes the augmentation stream is still a function of the seed."""
    extra = ("data.num_workers=2", "augment.preset=strong", "train.epochs=1")
    a = train(cfg_for(tiny_dataset, tmp_path, "run.name=wa", *extra))
    b = train(cfg_for(tiny_dataset, tmp_path, "run.name=wb", *extra))
    assert _history(Path(a.run_dir)) == _history(Path(b.run_dir))
    # the run records how many workers drew its augmentations; auto on CPU is none
    assert json.loads((Path(a.run_dir) / "summary.json").read_text())["env"]["data_workers"] == 2
    c = train(cfg_for(tiny_dataset, tmp_path, "run.name=wc", "train.epochs=1"))
    assert json.loads((Path(c.run_dir) / "summary.json").read_text())["env"]["data_workers"] == 0


def test_cache_modes_give_the_same_history(tmp_path, tiny_dataset):
    """The same seed trains the same model whether the images sit in memory, in a mapped file or in files."""
    runs = {
        mode: train(cfg_for(tiny_dataset, tmp_path, f"run.name={mode}", f"data.cache={mode}", "augment.preset=strong"))
        for mode in ("memory", "mmap", "stream")
    }
    histories = {mode: _history(Path(s.run_dir)) for mode, s in runs.items()}
    assert histories["mmap"] == histories["memory"] and histories["stream"] == histories["memory"]
    weights = {mode: torch.load(Path(s.run_dir) / "best.pt", weights_only=True)["model"] for mode, s in runs.items()}
    for mode in ("mmap", "stream"):
        assert all(torch.equal(weights[mode][k], weights["memory"][k]) for k in weights["memory"]), mode


def test_backbone_lr_mult_is_ignored_without_pretrained_weights(tmp_path, tiny_dataset, caplog):
    """A randomly initialised backbone trains at the full rate: the discriminative split is for pretrained ones."""
    import logging

    cfg = load_config(None, [f"data.root={tiny_dataset}", f"run.dir={tmp_path}", "run.name=m", *FAST,
                             "model.name=scratch_cnn_small", "optim.backbone_lr_mult=0.1", "optim.layer_decay=0.8"])
    with caplog.at_level(logging.INFO, logger="research.builders.training"):
        train(cfg)
    assert "optim.backbone_lr_mult=0.1 and optim.layer_decay=0.8 ignored" in caplog.text


def test_hflip_tta_in_validation_and_final_evaluation(tmp_path, tiny_dataset):
    """train.tta=hflip: the epoch's validation and the final evaluation of best.pt score the same averaged
    probabilities, so the selected checkpoint's summary equals the history row it was selected from, and
    a TTA validation differs from a plain one (the drawn faces are not mirror-symmetric)."""
    plain = train(cfg_for(tiny_dataset, tmp_path, "run.name=plain", "train.epochs=2"))
    tta = train(cfg_for(tiny_dataset, tmp_path, "run.name=tta", "train.epochs=2", "train.tta=hflip"))
    rows_plain, rows_tta = _history(Path(plain.run_dir)), _history(Path(tta.run_dir))
    assert [r["train/loss"] for r in rows_plain] == [r["train/loss"] for r in rows_tta]  # training is unchanged
    assert [r["val/loss"] for r in rows_plain] != [r["val/loss"] for r in rows_tta]
    saved = json.loads((Path(tta.run_dir) / "summary.json").read_text())
    selected = next(r for r in rows_tta if r["epoch"] == saved["best_epoch"])
    assert saved["best"]["val/acc"] == pytest.approx(selected["val/acc"], abs=1e-6)
    # validation runs in float32 even where training uses bf16 autocast (train.amp on CPU): the epoch's
    # numbers are the final evaluation's, which goes through inference.predict_logits
    assert saved["best"]["val/loss"] == pytest.approx(selected["val/loss"], abs=1e-4)
    assert saved["best"]["val/macro_f1"] == pytest.approx(selected["val/macro_f1"], abs=1e-6)
    from research.report.card import write_model_card

    card = write_model_card(Path(tta.run_dir), tmp_path / "card.md").read_text()
    assert "mean of the image's and its mirror's probabilities" in card


def test_ema_is_validated_saved_and_resumed(tmp_path, tiny_dataset, monkeypatch):
    """train.ema_decay > 0: training is unchanged, validation scores the averaged weights, best.pt holds
    them (so evaluate/predict/export use what was selected, and the final evaluation equals the selected
    epoch's row), last.pt keeps the raw weights too, and a resumed run equals an uninterrupted one."""
    from research.cli import resolve_train_config
    from research.engine.trainer import ModelEma
    from research.report.card import write_model_card

    extra = ("train.epochs=3", "augment.preset=medium")
    plain = train(cfg_for(tiny_dataset, tmp_path, "run.name=plain", *extra))
    ema = train(cfg_for(tiny_dataset, tmp_path, "run.name=ema", "train.ema_decay=0.9", *extra))
    rows_plain, rows_ema = _history(Path(plain.run_dir)), _history(Path(ema.run_dir))
    assert [r["train/loss"] for r in rows_plain] == [r["train/loss"] for r in rows_ema]
    assert [r["val/loss"] for r in rows_plain] != [r["val/loss"] for r in rows_ema]

    run = Path(ema.run_dir)
    last = torch.load(run / "last.pt", weights_only=True)
    best = torch.load(run / "best.pt", weights_only=True)
    assert last["ema"]["updates"] > 0 and "ema" not in best
    raw, averaged = last["ema"]["train_model"], last["model"]
    assert any(not torch.equal(raw[k], averaged[k]) for k in raw if raw[k].is_floating_point())
    saved = json.loads((run / "summary.json").read_text())
    selected = next(r for r in rows_ema if r["epoch"] == saved["best_epoch"])
    assert saved["best"]["val/acc"] == pytest.approx(selected["val/acc"], abs=1e-6)
    assert saved["best"]["val/macro_f1"] == pytest.approx(selected["val/macro_f1"], abs=1e-6)
    card = write_model_card(run, tmp_path / "card.md").read_text()
    assert "an exponential moving average of the training weights (decay 0.9)" in card

    stop_interrupting = interrupt_after_epoch(monkeypatch, 2)
    with pytest.raises(KeyboardInterrupt):
        train(cfg_for(tiny_dataset, tmp_path, "run.name=cut", "train.ema_decay=0.9", *extra))
    stop_interrupting()
    train(resolve_train_config(None, [f"run.resume={tmp_path / 'cut'}"]))
    assert _history(tmp_path / "cut") == rows_ema

    # the decay ramps up from the first update, so the average follows early training
    net = torch.nn.Linear(2, 1)
    avg = ModelEma(net, 0.999)
    with torch.no_grad():
        net.weight.add_(1.0)
    avg.update(net)
    assert torch.allclose(avg.module.weight, net.weight - 1.0 + (1 - 2 / 11))


def test_mix_batch_mixup_and_cutmix_blend_each_image_with_its_partner():
    from research.engine.trainer import mix_batch

    images = torch.arange(4 * 1 * 8 * 8, dtype=torch.float32).reshape(4, 1, 8, 8)
    assert mix_batch(images, 0.0, 0.0) is None
    assert mix_batch(images[:1], 0.4, 1.0) is None  # one image has no partner
    torch.manual_seed(0)
    mixed, partner, lam = mix_batch(images, 0.4, 0.0)
    assert 0 <= lam <= 1 and sorted(partner.tolist()) == [0, 1, 2, 3]
    assert torch.allclose(mixed, lam * images + (1 - lam) * images[partner])
    for seed in range(20):
        torch.manual_seed(seed)
        mixed, partner, lam = mix_batch(images, 0.0, 1.0)
        own = mixed == images
        theirs = mixed == images[partner]
        assert bool((own | theirs).all())  # every pixel is the image's own or its partner's
        moved = partner != torch.arange(4)
        if moved.any():  # lam = the share of the image's own pixels (the pasted box clipped at the borders)
            share = own[moved].float().mean().item()
            assert share == pytest.approx(lam, abs=1e-6)


def test_mixup_and_cutmix_train_and_are_recorded_in_the_model_card(tmp_path, tiny_dataset, monkeypatch):
    """Mixed batches change training (not validation's inputs); the run is deterministic per seed; the
    recipe is in the config and the model card; the curves say the training side saw mixed images."""
    from research import plots
    from research.report.card import write_model_card

    legends = []
    real_plot_curves = plots.plot_curves

    def recording_plot_curves(*args, **kwargs):
        legends.append(kwargs.get("train_label", "train"))
        return real_plot_curves(*args, **kwargs)

    monkeypatch.setattr(plots, "plot_curves", recording_plot_curves)

    extra = ("train.epochs=2",)
    plain = train(cfg_for(tiny_dataset, tmp_path, "run.name=plain", *extra))
    mixed = [train(cfg_for(tiny_dataset, tmp_path, f"run.name=mix{i}", "train.mixup_alpha=0.4", "train.cutmix_alpha=1.0",
                           *extra)) for i in range(2)]
    rows_plain, rows_mix = _history(Path(plain.run_dir)), _history(Path(mixed[0].run_dir))
    assert [r["train/loss"] for r in rows_plain] != [r["train/loss"] for r in rows_mix]
    assert rows_mix == _history(Path(mixed[1].run_dir))
    assert all(torch.isfinite(torch.tensor(r["val/loss"])) for r in rows_mix)
    card = write_model_card(Path(mixed[0].run_dir), tmp_path / "card.md").read_text()
    assert "batches mixed: mixup alpha 0.4 or CutMix alpha 1" in card
    assert legends == ["train", "train (mixup/CutMix batches)", "train (mixup/CutMix batches)"]


def test_a_mixed_batch_is_scored_against_both_labels(monkeypatch):
    """Trainer.step's loss on a mixed batch is lam x CE(own label) + (1 - lam) x CE(partner's label),
    with the run's class weights and label smoothing; a mask scores a subset against the same partners."""
    import torch.nn.functional as F

    from research.engine import trainer as trainer_module
    from research.engine.trainer import Trainer

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))
    weight = torch.tensor([1.0, 2.0, 0.5])
    loss_fn = torch.nn.CrossEntropyLoss(weight=weight, label_smoothing=0.1)
    trainer = Trainer(model, optimizer=torch.optim.SGD(model.parameters(), lr=0.0), loss_fn=loss_fn,
                      device=torch.device("cpu"), epochs=1, amp=False, channels_last=False, mixup_alpha=0.4)
    images, targets = torch.randn(4, 1, 4, 4), torch.tensor([0, 1, 2, 1])
    partner, lam = torch.tensor([2, 3, 0, 1]), 0.7
    mixed = images * lam + images[partner] * (1 - lam)
    monkeypatch.setattr(trainer_module, "mix_batch", lambda x, a, b: (mixed, partner, lam))
    loss, logits = trainer.step(images, targets, train=True)
    with torch.no_grad():
        out = model(mixed)
    expected = lam * F.cross_entropy(out, targets, weight=weight, label_smoothing=0.1) + (1 - lam) * F.cross_entropy(
        out, targets[partner], weight=weight, label_smoothing=0.1)
    assert torch.allclose(logits, out) and loss.item() == pytest.approx(expected.item(), rel=1e-5)
    keep = torch.tensor([True, False, True, False])
    subset = lam * F.cross_entropy(out[keep], targets[keep], weight=weight, label_smoothing=0.1) + (1 - lam) * F.cross_entropy(
        out[keep], targets[partner][keep], weight=weight, label_smoothing=0.1)
    assert trainer.batch_loss(logits, targets, trainer.last_mix, keep).item() == pytest.approx(subset.item(), rel=1e-5)


def test_layer_decay_and_drop_path_train_a_pretrained_timm_model_and_reach_the_card(tmp_path, tiny_dataset):
    """optim.layer_decay and model.drop_path in a real run of a timm backbone with weights from a file: the
    run trains, and the model card states both (the per-group rates: test_models.py)."""
    import timm

    from research.report.card import write_model_card

    weights = tmp_path / "lite0.pth"
    torch.save(timm.create_model("tf_efficientnet_lite0").state_dict(), weights)
    summary = train(cfg_for(tiny_dataset, tmp_path / "runs", "run.name=ld", "model.name=timm/tf_efficientnet_lite0",
                            f"model.pretrained_file={weights}", "data.channels=3", "optim.lr=0.002",
                            "optim.backbone_lr_mult=0.5", "optim.layer_decay=0.8", "model.drop_path=0.1"))
    rows = _history(Path(summary.run_dir))
    assert all(math.isfinite(r["train/loss"]) for r in rows)
    # every parameter group's rate in history.csv: the head at lr, the top backbone group at lr x 0.5, each
    # group below at 0.8 x the one above; "lr" stays the head's
    groups = sorted((k for k in rows[0] if k.startswith("lr/backbone_")), key=lambda k: int(k.rsplit("_", 1)[1]))
    assert len(groups) >= 3 and rows[0]["lr/head"] == rows[0]["lr"]
    assert rows[0][groups[-1]] == pytest.approx(0.5 * rows[0]["lr/head"])
    for lower, upper in zip(groups, groups[1:], strict=False):
        assert rows[0][lower] == pytest.approx(0.8 * rows[0][upper])
    card = write_model_card(Path(summary.run_dir), tmp_path / "card.md").read_text()
    assert "lr 0.002, backbone at 0.5x, layer-wise decay 0.8 per layer group" in card
    assert "- stochastic depth: residual blocks dropped with rate up to 0.1 in training (`model.drop_path`)" in card


def test_init_from_a_run_starts_from_its_weights_and_refuses_another_model(tmp_path, tiny_dataset, caplog):

    """model.init_from=RUN: the new run's network (head included) and normalisation start as RUN's best.pt,
    its pretrained source names RUN (so discriminative rates apply and the card says where it came from),
    and it trains on; a run of another model or channel count is refused at load, naming both."""
    import logging

    from research.builders import model as builders
    from research.cli import train_main
    from research.config import ConfigError

    first = train(cfg_for(tiny_dataset, tmp_path, "run.name=source", "data.mean=[0.4]", "data.std=[0.3]"))
    best = torch.load(Path(first.run_dir) / "best.pt", weights_only=True)
    cfg = cfg_for(tiny_dataset, tmp_path, "run.name=child", f"model.init_from={first.run_dir}", "optim.backbone_lr_mult=0.5")
    model = builders.build_model(cfg)
    assert all(torch.equal(v, best["model"][k]) for k, v in model.state_dict().items())
    assert (model.mean, model.std) == (pytest.approx((0.4,)), pytest.approx((0.3,)))
    assert model.pretrained_source == "run:source/best.pt"
    with caplog.at_level(logging.INFO, logger="research.train"):
        child = train(cfg)
    assert "ignored" not in caplog.text  # the backbone counts as pretrained: the discriminative rates apply
    assert json.loads((Path(child.run_dir) / "summary.json").read_text())["pretrained"] == "run:source/best.pt"
    with pytest.raises(ConfigError, match=r"holds a scratch_cnn_small model on 1-channel input, but this run builds "
                                          r"scratch_cnn on 1-channel input; set model.name=scratch_cnn_small data.channels=1"):
        builders.build_model(cfg_for(tiny_dataset, tmp_path, "model.name=scratch_cnn", f"model.init_from={first.run_dir}"))
    with pytest.raises(SystemExit) as exit_info:
        train_main([*FAST, f"data.root={tiny_dataset}", f"run.dir={tmp_path / 'other'}", "data.channels=3",
                    f"model.init_from={first.run_dir}"])
    assert exit_info.value.code == 2 and not (tmp_path / "other").exists()
    assert "set model.name=scratch_cnn_small data.channels=1" in caplog.text


def test_an_init_from_run_resumes_after_its_source_is_gone(tmp_path, tiny_dataset, monkeypatch):
    """Resuming reads last.pt only: the source run may be deleted; the normalisation and weight source stay
    what the run started with, and the history continues."""
    import shutil

    first = train(cfg_for(tiny_dataset, tmp_path, "run.name=source", "data.mean=[0.4]", "data.std=[0.3]"))
    stop = interrupt_after_epoch(monkeypatch, 1)
    cfg = cfg_for(tiny_dataset, tmp_path, "run.name=child", f"model.init_from={first.run_dir}",
                  "optim.backbone_lr_mult=0.5", "train.epochs=2")
    with pytest.raises(KeyboardInterrupt):
        train(cfg)
    stop()
    shutil.rmtree(first.run_dir)
    child = Path(tmp_path) / "child"
    from research.cli import resolve_train_config

    resumed = train(resolve_train_config(None, [f"run.resume={child}"]))
    assert [r["epoch"] for r in _history(child)] == [1, 2]
    last = torch.load(child / "last.pt", weights_only=True)
    assert last["mean"] == pytest.approx([0.4]) and last["std"] == pytest.approx([0.3])
    assert resumed.pretrained == "run:source/best.pt"
