"""The single trainer: one step and one metric path for training and validation.

``Trainer.fit`` runs epochs of :meth:`Trainer.train_one_epoch` and :meth:`Trainer.evaluate`;
both go through :meth:`Trainer.run_epoch`, which collects the logits of the whole epoch and
computes every metric once over them (never averaged per batch).

Reproducibility: every epoch reseeds torch, numpy, python, the sampler and the
augmentation pipeline from ``(seed, epoch)``. An epoch therefore does not depend on how
the run got there, which is what makes a resumed run equal an uninterrupted one on CPU.
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from research.engine.distributed import Distributed
from research.engine.metrics import compute_metrics
from research.engine.runtime import cpu_bf16_supported, epoch_seed, is_interactive
from research.errors import UserError
from research.models.classifier import FERClassifier, mirror_average

log = logging.getLogger(__name__)


class NonFiniteLossError(UserError, RuntimeError):
    """The loss became NaN or infinite; the message says where and what to try."""


@dataclass
class EpochOutput:
    """Metrics of one pass plus the raw predictions they were computed from."""

    metrics: dict[str, float]
    logits: np.ndarray  # (N, C)
    targets: np.ndarray  # (N,)
    seconds: float
    images: int


@dataclass
class TrainerState:
    epoch: int = 0  # completed epochs
    history: list[dict[str, float]] = field(default_factory=list)
    best_score: float | None = None
    best_epoch: int = 0
    bad_epochs: int = 0
    train_seconds: float = 0.0
    train_images: int = 0
    stopped_by: str | None = None  # "early_stopping" | "callback" when the run ended before `epochs`


def cpu_state(module: nn.Module) -> dict[str, torch.Tensor]:
    """``module``'s state dict as detached CPU tensors (what checkpoints store)."""
    return {k: v.detach().cpu() for k, v in module.state_dict().items()}


class ModelEma:
    """Exponential moving average of a model's weights and buffers, updated after every optimiser step.

    ``decay`` ramps up as ``min(decay, (1 + n) / (10 + n))`` over the first ``n`` updates (the
    ``num_updates`` rule of TensorFlow's ``ExponentialMovingAverage``), so the average follows the fast
    early training instead of remembering the random initialisation. Batch-norm running statistics are averaged too; integer buffers are copied.
    """

    def __init__(self, model: nn.Module, decay: float) -> None:
        import copy

        self.decay = decay
        self.updates = 0
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)
        state = self.module.state_dict()
        self._floats = [k for k, v in state.items() if v.is_floating_point()]  # averaged
        self._others = [k for k, v in state.items() if not v.is_floating_point()]  # copied (num_batches_tracked)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.updates += 1
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates))
        ema_state, state = self.module.state_dict(), model.state_dict()
        torch._foreach_lerp_([ema_state[k] for k in self._floats], [state[k].detach() for k in self._floats], 1.0 - decay)
        for k in self._others:
            ema_state[k].copy_(state[k])

    def state_dict(self) -> dict[str, Any]:
        return {"module": cpu_state(self.module), "updates": self.updates}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.module.load_state_dict(state["module"])
        self.updates = int(state["updates"])


def mix_batch(images: torch.Tensor, mixup_alpha: float, cutmix_alpha: float) -> tuple[torch.Tensor, torch.Tensor, float] | None:
    """Mixup or CutMix of a training batch with a shuffled copy of itself (``None`` when both are off).

    Returns (mixed images, partner index per image, lam): the loss is ``lam`` x the loss on each image's
    own label plus ``1 - lam`` x the loss on its partner's. With both alphas set, each batch picks one
    of the two at random. Mixup blends whole images with ``lam ~ Beta(a, a)``; CutMix pastes a box of
    the partner (area ``1 - lam``) and ``lam`` is recomputed from the box as clipped at the borders.
    Draws from torch's global generator, which the trainer reseeds every epoch (resume-exact).
    """
    if mixup_alpha <= 0 and cutmix_alpha <= 0 or images.shape[0] < 2:
        return None
    use_cutmix = cutmix_alpha > 0 and (mixup_alpha <= 0 or bool(torch.rand(()) < 0.5))
    alpha = cutmix_alpha if use_cutmix else mixup_alpha
    lam = float(torch.distributions.Beta(alpha, alpha, validate_args=False).sample())
    partner = torch.randperm(images.shape[0], device=images.device)
    if not use_cutmix:
        return images * lam + images[partner] * (1 - lam), partner, lam
    h, w = images.shape[-2:]
    cut = math.sqrt(1 - lam)
    ch, cw = int(h * cut), int(w * cut)
    cy, cx = int(torch.randint(h, ())), int(torch.randint(w, ()))
    y0, y1 = max(cy - ch // 2, 0), min(cy + ch // 2, h)
    x0, x1 = max(cx - cw // 2, 0), min(cx + cw // 2, w)
    mixed = images.clone()
    mixed[:, :, y0:y1, x0:x1] = images[partner, :, y0:y1, x0:x1]
    return mixed, partner, 1 - (y1 - y0) * (x1 - x0) / (h * w)


def learning_rates(optimizer: torch.optim.Optimizer) -> dict[str, float]:
    """The learning rate of every parameter group by its ``name`` (``head``, ``backbone``, ``backbone_3``...,
    set by :func:`research.builders.training.build_optimizer`), else ``pg<index>``; groups of one name
    (with and without weight decay) share their rate."""
    rates: dict[str, float] = {}
    for index, group in enumerate(optimizer.param_groups):
        rates.setdefault(str(group.get("name") or f"pg{index}"), float(group["lr"]))
    return rates


class Trainer:
    """Trains a :class:`FERClassifier`; checkpoints best/last; early stopping on ``monitor``."""

    def __init__(
        self,
        model: FERClassifier,
        *,
        optimizer: torch.optim.Optimizer,
        loss_fn: nn.Module,
        device: torch.device,
        epochs: int,
        scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
        scheduler_interval: str = "step",
        grad_clip: float = 0.0,
        amp: bool = True,
        channels_last: bool = True,
        monitor: str = "val/macro_f1",
        patience: int = 0,
        unfreeze_epoch: int = 0,
        seed: int = 0,
        checkpoint_fn: Callable[[str, dict[str, Any]], None] | None = None,
        on_epoch_end: Callable[[dict[str, float], EpochOutput], bool | None] | None = None,
        progress: bool | None = None,
        distributed: Distributed | None = None,
        tta: str = "none",
        ema_decay: float = 0.0,
        mixup_alpha: float = 0.0,
        cutmix_alpha: float = 0.0,
    ) -> None:
        self.device = device
        self.model = model.to(device)
        self.cuda = device.type == "cuda"
        # channels-last helps oneDNN on CPU as much as cuDNN on CUDA (benchmarks/scratch_levers.py).
        self.channels_last = channels_last and device.type in ("cpu", "cuda")
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.dist = distributed or Distributed()
        self.net: nn.Module = self.model  # what the steps call: the model, or its DDP wrapper during fit
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.scheduler_interval = scheduler_interval
        self.loss_fn = loss_fn.to(device)
        self.epochs = epochs
        self.grad_clip = grad_clip
        self.tta = tta  # "hflip": validation scores the mean of the image's and its mirror's probabilities
        self.amp_dtype = None
        if amp and self.cuda:
            self.amp_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        elif amp and device.type == "cpu" and cpu_bf16_supported():
            self.amp_dtype = torch.bfloat16  # oneDNN bf16 kernels; no loss scaling needed for bfloat16
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)
        self.monitor = monitor
        self.minimize = monitor.endswith("loss")
        self.patience = patience
        self.unfreeze_epoch = unfreeze_epoch
        self.seed = seed
        self.checkpoint_fn = checkpoint_fn
        self.on_epoch_end = on_epoch_end
        self.progress = is_interactive() if progress is None else progress
        self.state = TrainerState()
        # Weight EMA: validation, best.pt and the final evaluation use the averaged weights.
        self.ema = ModelEma(self.model, ema_decay) if ema_decay > 0 else None
        self.mixup_alpha, self.cutmix_alpha = mixup_alpha, cutmix_alpha
        self.last_mix: tuple[torch.Tensor, float] | None = None

    @property
    def precision(self) -> str:
        """What the training steps compute in: ``float32``, or ``bfloat16`` / ``float16`` autocast
        (bfloat16 on CPUs whose oneDNN runs it natively, e.g. AVX-512 BF16; float32 on AVX2)."""
        return "float32" if self.amp_dtype is None else f"{str(self.amp_dtype).removeprefix('torch.')} autocast"

    # --- one step, one epoch -------------------------------------------------------
    def step(self, images: torch.Tensor, targets: torch.Tensor, *, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """Forward (+ backward and optimiser step when ``train``). Returns (mean loss, logits)."""
        images = images.to(self.device, non_blocking=True)
        targets = targets.to(self.device, non_blocking=True)
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        # Mixed precision for training steps only: validation runs in float32 like the one inference path
        # (inference.predict_logits, export), so the checkpoint is selected on the numbers users get.
        # bfloat16 validation of a bf16-trained tf_efficientnet_lite0 differed from its float32 scores by
        # 5 macro-F1 points on emociones-dev.
        net = self.net if train or self.ema is None else self.ema.module
        mix = mix_batch(images, self.mixup_alpha, self.cutmix_alpha) if train else None
        self.last_mix = None  # (partner index, lam) of this batch when it was mixed: run_epoch re-scores with it
        if mix is not None:
            images, partner, lam = mix
            self.last_mix = (partner, lam)
        with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=train and self.amp_dtype is not None):
            logits = net(images)
            if not train and self.tta == "hflip":  # the same averaging as inference.predict_logits
                logits = mirror_average(net, images, logits)
            loss = self.batch_loss(logits, targets, self.last_mix)
        if train:
            if not self.dist.all_true(bool(torch.isfinite(loss))):  # every rank stops, not only the one that saw it
                raise self.non_finite(f"training loss became {loss.item()}", "")
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            if self.grad_clip > 0:
                self.scaler.unscale_(self.optimizer)
                nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
            self.scaler.step(self.optimizer)
            self.scaler.update()
            if self.ema is not None:
                self.ema.update(self.model)
            if self.scheduler is not None and self.scheduler_interval == "step":
                self.scheduler.step()
        return loss.detach(), logits.detach()

    def non_finite(self, what: str, why: str) -> NonFiniteLossError:
        """The one message for a loss that is NaN or infinite: the epoch, the fix, and what is saved."""
        epoch = self.state.epoch + 1
        saved = (
            f"last.pt holds epoch {epoch - 1}, the last good one" if epoch > 1
            else "no epoch finished, so no checkpoint was written"
        )
        peak = max(group.get("initial_lr", group["lr"]) for group in self.optimizer.param_groups)
        return NonFiniteLossError(
            f"{what} at epoch {epoch}{why}. Lower optim.lr (the peak learning rate is {peak:.2e}), set "
            f"train.grad_clip=1.0, or check the input images; {saved}."
        )

    def batch_loss(
        self, logits: torch.Tensor, targets: torch.Tensor, mix: tuple[torch.Tensor, float] | None = None,
        keep: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The loss of a batch; for a mixed one ``lam`` x (own label) + ``1 - lam`` x (partner's label).
        ``keep`` (a boolean mask) scores only those images, each still against its own partner."""
        partner_targets = targets[mix[0]] if mix is not None else None
        if keep is not None:
            logits, targets = logits[keep], targets[keep]
            partner_targets = partner_targets[keep] if partner_targets is not None else None
        loss = self.loss_fn(logits.float(), targets)
        if mix is not None:
            loss = mix[1] * loss + (1 - mix[1]) * self.loss_fn(logits.float(), partner_targets)
        return loss

    def run_epoch(self, loader: DataLoader, *, train: bool, desc: str = "") -> EpochOutput:
        """One pass over ``loader``; metrics over all of its predictions (of every rank's shard).

        ``loss`` is the run's criterion (class weights, label smoothing) computed once over the whole
        epoch's logits, as every other metric, so it does not depend on how the images were batched or
        sharded (the final evaluation of a checkpoint gives the same number). Only a training epoch with
        mixup/CutMix, whose targets are mixed batch by batch, reports the mean of its batches' losses."""
        self.net.train(train)
        all_logits, all_targets = [], []
        loss_sum, seen = 0.0, 0
        shard = self.dist.shard(loader)
        done = 0  # samples of this rank's shard passed so far
        start = time.perf_counter()
        bar = tqdm(loader, desc=desc, leave=False, disable=not self.progress, unit="batch")
        with torch.set_grad_enabled(train):
            for images, targets in bar:
                loss, logits = self.step(images, targets, train=train)
                if shard is not None:
                    real = torch.from_numpy(shard.real[done : done + len(targets)])
                    done += len(targets)
                    if not real.all():  # the sampler's repeated samples: trained on, not counted
                        keep = real.to(logits.device)
                        if keep.any():
                            loss = self.batch_loss(logits, targets.to(self.device), self.last_mix, keep).detach()
                        logits, targets = logits[keep], targets[real]
                batch = targets.shape[0]
                loss_sum += loss.item() * batch
                seen += batch
                all_logits.append(logits.float().cpu())
                all_targets.append(targets.cpu())
                if self.progress:
                    bar.set_postfix(loss=f"{loss_sum / max(seen, 1):.3f}")
        seconds = time.perf_counter() - start
        logits_np = torch.cat(all_logits).numpy()
        targets_np = torch.cat(all_targets).numpy()
        if shard is not None:
            logits_np, targets_np, loss_sum, seen = self.dist.gather_epoch(
                shard.indices[shard.real], logits_np, targets_np, loss_sum, seen
            )
        mixed = train and (self.mixup_alpha > 0 or self.cutmix_alpha > 0)
        loss = loss_sum / max(seen, 1) if mixed else self.epoch_loss(logits_np, targets_np)
        if not math.isfinite(loss):
            what = "validation" if not train else "training"
            raise self.non_finite(f"{what} loss became {loss}", " (the weights diverged in training)")
        metrics = compute_metrics(logits_np, targets_np, loss=loss, num_classes=logits_np.shape[1])
        return EpochOutput(metrics, logits_np, targets_np, seconds, seen)

    def epoch_loss(self, logits: np.ndarray, targets: np.ndarray) -> float:
        """The run's criterion over a whole set of ``(N, C)`` logits at once (not averaged per batch)."""
        with torch.no_grad():
            value = self.loss_fn(torch.from_numpy(logits).float().to(self.device), torch.from_numpy(targets).long().to(self.device))
        return float(value.item())

    def train_one_epoch(self, loader: DataLoader) -> EpochOutput:
        return self.run_epoch(loader, train=True, desc=f"train {self.state.epoch + 1}/{self.epochs}")

    @torch.no_grad()
    def evaluate(self, loader: DataLoader, desc: str = "validate") -> EpochOutput:
        return self.run_epoch(loader, train=False, desc=desc)

    # --- the loop --------------------------------------------------------------------
    def _reseed(self, loader: DataLoader, epoch: int) -> None:
        # Each rank draws its own augmentations and dropout; the distributed sampler shuffles by (seed, epoch).
        seed = epoch_seed(self.seed, epoch) + self.dist.rank
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)
        generator = getattr(loader, "generator", None)
        if generator is not None:
            generator.manual_seed(seed)
        sampler_generator = getattr(loader.sampler, "generator", None)
        if sampler_generator is not None:
            sampler_generator.manual_seed(seed)
        if hasattr(loader.sampler, "set_epoch"):
            loader.sampler.set_epoch(epoch)
        transform = getattr(loader.dataset, "transform", None)
        if hasattr(transform, "set_random_seed"):
            transform.set_random_seed(seed)

    def _improved(self, score: float) -> bool:
        best = self.state.best_score
        if best is None or not math.isfinite(best):
            return math.isfinite(score)
        return score < best if self.minimize else score > best

    def fit(self, train_loader: DataLoader, val_loader: DataLoader) -> list[dict[str, float]]:
        """Train from ``state.epoch`` to ``epochs``; returns the history (one dict per epoch)."""
        state = self.state
        if state.epoch >= self.epochs:
            log.info("already trained %d/%d epochs; nothing to do", state.epoch, self.epochs)
            return state.history
        epochs = tqdm(
            range(state.epoch, self.epochs), desc="epochs", disable=not self.progress,
            initial=state.epoch, total=self.epochs, unit="epoch",
        )
        self.net = self.dist.wrap(self.model, self.device)
        for epoch in epochs:
            if self.unfreeze_epoch and epoch == self.unfreeze_epoch and self.model.frozen:
                log.info("epoch %d: unfreezing the backbone (model.unfreeze_epoch)", epoch + 1)
                self.model.unfreeze()
                self.net = self.dist.wrap(self.model, self.device)  # DDP syncs the parameters trainable when wrapped
            row, val_out = self._epoch(epoch, train_loader, val_loader)
            improved = self._record_epoch(row)
            if self.checkpoint_fn is not None:
                checkpoint = self.checkpoint()
                self.checkpoint_fn("last", checkpoint)
                if improved:
                    self.checkpoint_fn("best", checkpoint)
            stop_requested = bool(self.on_epoch_end(row, val_out)) if self.on_epoch_end is not None else False
            log.info(
                "epoch %d/%d  train loss %.4f acc %.3f | val loss %.4f acc %.3f top2 %.3f macro-F1 %.3f%s",
                epoch + 1, self.epochs, row["train/loss"], row["train/acc"], row["val/loss"], row["val/acc"],
                row["val/top2"], row["val/macro_f1"], "  *best*" if improved else "",
            )
            if stop_requested:
                log.info("stopping after epoch %d: requested by the epoch callback (e.g. sweep early termination)", epoch + 1)
                state.stopped_by = "callback"
                break
            if self.patience and state.bad_epochs >= self.patience:
                log.info("early stopping: %s has not improved for %d epochs", self.monitor, self.patience)
                state.stopped_by = "early_stopping"
                break
        self.net = self.model  # later forward passes (final evaluation on rank 0) need no other rank
        return state.history

    def _epoch(self, epoch: int, train_loader: DataLoader, val_loader: DataLoader) -> tuple[dict[str, float], EpochOutput]:
        """Train and validate epoch ``epoch`` (0-based); its history row and the validation pass."""
        self._reseed(train_loader, epoch)
        lr, rates = self.optimizer.param_groups[0]["lr"], learning_rates(self.optimizer)  # at the epoch's start
        train_out = self.train_one_epoch(train_loader)
        if self.ema is not None:  # each rank averaged its own batch-norm statistics; validate rank 0's
            self.dist.sync_buffers(self.ema.module)
        val_out = self.evaluate(val_loader)
        self.state.train_seconds += train_out.seconds
        self.state.train_images += train_out.images
        row: dict[str, float] = {"epoch": epoch + 1}
        row.update({f"train/{k}": v for k, v in train_out.metrics.items() if k not in ("ece", "nll")})
        row.update({f"val/{k}": v for k, v in val_out.metrics.items()})
        row["lr"] = lr  # the first group's (the head's), the column older runs have
        row.update({f"lr/{name}": rate for name, rate in rates.items()})
        row["epoch_seconds"] = train_out.seconds + val_out.seconds
        if self.scheduler is not None and self.scheduler_interval == "epoch":
            if isinstance(self.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
                self.scheduler.step(row[self.monitor])
            else:
                self.scheduler.step()
        return row, val_out

    def _record_epoch(self, row: dict[str, float]) -> bool:
        """Append the row to the history and update best / patience; True when the monitor improved."""
        state = self.state
        state.history.append(row)
        state.epoch = int(row["epoch"])
        improved = self._improved(row[self.monitor])
        if improved:
            state.best_score, state.best_epoch, state.bad_epochs = row[self.monitor], state.epoch, 0
        else:
            state.bad_epochs += 1
        return improved

    # --- checkpoints -----------------------------------------------------------------
    def checkpoint(self) -> dict[str, Any]:
        """Everything needed to continue training exactly where this epoch ended.

        ``model`` holds the weights that were validated (the EMA when ``ema_decay`` > 0), so best.pt
        serves inference as it is; ``ema`` then also keeps the raw training weights for resuming.
        """
        s = self.state
        weights, ema = cpu_state(self.model), None
        if self.ema is not None:
            ema = {"train_model": weights, "updates": self.ema.updates}
            weights = cpu_state(self.ema.module)
        return {
            "model": weights,
            "ema": ema,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "scaler": self.scaler.state_dict(),
            "frozen": self.model.frozen,
            "trainer": {
                "epoch": s.epoch, "history": s.history, "best_score": s.best_score, "best_epoch": s.best_epoch,
                "bad_epochs": s.bad_epochs, "train_seconds": s.train_seconds, "train_images": s.train_images,
            },
        }

    def load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Restore model, optimiser, scheduler, scaler and loop state from :meth:`checkpoint`."""
        if checkpoint.get("frozen"):
            self.model.freeze_backbone()
        else:
            self.model.unfreeze()
        ema = checkpoint.get("ema")  # with an EMA, "model" is the average and the training weights are here
        self.model.load_state_dict(ema["train_model"] if ema is not None else checkpoint["model"])
        if self.ema is not None and ema is not None:
            self.ema.load_state_dict({"module": checkpoint["model"], "updates": ema["updates"]})
        elif self.ema is not None:  # EMA switched on at resume: start the average from here
            self.ema = ModelEma(self.model, self.ema.decay)
        names = [group.get("name") for group in self.optimizer.param_groups]
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        for group, name in zip(self.optimizer.param_groups, names, strict=True):  # checkpoints older than the names
            if name is not None:
                group["name"] = name
        if self.scheduler is not None and checkpoint.get("scheduler") is not None:
            self.scheduler.load_state_dict(checkpoint["scheduler"])
        if checkpoint.get("scaler"):
            self.scaler.load_state_dict(checkpoint["scaler"])
        t = checkpoint["trainer"]
        self.state = TrainerState(
            epoch=t["epoch"], history=list(t["history"]), best_score=t["best_score"], best_epoch=t["best_epoch"],
            bad_epochs=t["bad_epochs"], train_seconds=t["train_seconds"], train_images=t["train_images"],
        )
