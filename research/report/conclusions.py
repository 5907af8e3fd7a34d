"""Conclusions of the report, computed from the numbers; each bullet quotes the numbers it rests on.

Comparisons are between configurations (the runs of one config over seeds, :func:`group_runs`), each
stated as mean ± std over its seeds. Speed and size are compared only between different architectures
or input sizes (between seeds of one model they measure the machine, not the model), and a speed "win"
only when the two configurations' repeated timings do not overlap; the sentence gives that spread.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import numpy as np

from research.report.collect import RunRecord
from research.report.statistics import ALPHA, RunGroup, group_runs, paired_test


def _points(a: float, b: float) -> str:
    """Difference of two fractions in percentage points."""
    return f"{abs(a - b) * 100:.1f} points"


def conclusions(runs: Sequence[RunRecord]) -> list[str]:
    """Markdown bullets computed from the numbers; each quotes the numbers it rests on.

    The report calls this once per dataset; runs from several datasets only meet here when
    the user asks for a combined ranking, and then the first bullet is a caution.
    """
    lines: list[str] = []
    datasets = sorted({r.dataset.name for r in runs})
    if len(datasets) > 1:
        lines.append(
            f"- Caution: the runs used {len(datasets)} different datasets ({', '.join(datasets)}); "
            "validation scores are only comparable between runs on the same data."
        )
    lines += _best_model(runs)
    groups = [g for g in group_runs(runs) if g.mean("macro_f1") is not None]
    lines += _speed(groups)
    lines += _size(groups)
    lines += _calibration(groups)
    lines += _confidence(group_runs(runs))
    for record in runs:
        facts = [
            fact
            for fact in (
                _confused_pair(record),
                _weakest_class(record),
                _crop_effect(record),
                _overfitting(record),
                _best_epoch_note(record),
            )
            if fact
        ]
        if facts:
            lines.append(f"- **{record.model}** (`{record.run_id}`):")
            lines += [f"  - {fact}" for fact in facts]
    return lines


def _value(group: RunGroup, metric: str) -> str:
    """``0.700`` for one run, ``0.700 ± 0.012`` (mean ± sample std) for repeated runs."""
    std = group.std(metric)
    return f"{group.mean(metric):.3f}" + ("" if std is None else f" ± {std:.3f}")


def _best_model(runs: Sequence[RunRecord]) -> list[str]:
    """The best configuration against the runner-up, with the paired test of the two."""
    groups = [g for g in group_runs(runs) if g.mean("macro_f1") is not None]
    if not groups:
        return ["- No run has a validation macro-F1; nothing to rank."]
    best = groups[0]
    f1 = float(best.mean("macro_f1"))
    text = f"- Best model by validation macro-F1: **{best.label}** with {_value(best, 'macro_f1')}"
    notes = [f"mean ± std over {best.n} seeds"] if best.n > 1 else []
    if best.mean("acc") is not None:
        notes.append(f"accuracy {_value(best, 'acc')}")
    if notes:
        text += f" ({'; '.join(notes)})"
    if len(groups) == 1:
        what = "run" if best.n == 1 else "configuration"
        text += f"; it is the only {what} on this dataset, so there is nothing to compare it with."
    else:
        second = groups[1]
        f1_second = float(second.mean("macro_f1"))
        if f1 == f1_second:
            text += f", tied with {second.label} ({_value(second, 'macro_f1')})."
        else:
            text += f", {_points(f1, f1_second)} above the runner-up, {second.label} ({_value(second, 'macro_f1')})."
    val_images = best.best_run.dataset.val_images
    if val_images:
        text += f" With {val_images} validation images, one image is worth {100 / val_images:.2f} accuracy points."
    lines = [text]
    if len(groups) > 1:
        lines.append(_paired(best, groups[1]))
    return lines


def _paired(a: RunGroup, b: RunGroup) -> str:
    """McNemar's exact test of ``a`` against ``b`` on the same validation images, or why there is none."""
    test = paired_test(a, b)
    if isinstance(test, str):
        return f"- **{a.label}** vs **{b.label}**: no paired test ({test})."
    which = "; for repeated runs, on the best seed of each" if a.n > 1 or b.n > 1 else ""
    verdict = (
        f"the difference is significant at the {ALPHA:.0%} level"
        if test.significant
        else f"the difference is not significant at the {ALPHA:.0%} level (it may be chance)"
    )
    return (
        f"- Paired test of **{a.label}** vs **{b.label}** on the same {test.images} validation images "
        f"(McNemar's exact test{which}): only {a.label} is right on {test.only_a} image(s), only {b.label} "
        f"on {test.only_b}; p = {test.p_value:.3g}, so {verdict}."
    )


def _over_seeds(values: Sequence[float], digits: int = 3) -> str:
    """``0.050`` for one run, ``0.050 ± 0.010 over 3 seeds`` (mean ± sample std) for repeated runs."""
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{np.mean(values):.{digits}f} ± {np.std(values, ddof=1):.{digits}f} over {len(values)} seeds"


def _other_model(group: RunGroup, best: RunGroup) -> bool:
    """Another architecture or input size: the only comparisons where speed and size say something."""
    return group.model != best.model or group.best_run.image_size != best.best_run.image_size


def _cost(group: RunGroup, best: RunGroup) -> str:
    f1, f1_best = float(group.mean("macro_f1")), float(best.mean("macro_f1"))
    if f1 == f1_best:
        return f"at the same macro-F1 ({_value(group, 'macro_f1')})"
    verb = "gives up" if f1 < f1_best else "gains"
    return f"it {verb} {_points(f1, f1_best)} of macro-F1 ({_value(group, 'macro_f1')} vs {_value(best, 'macro_f1')})"


def latency_spread(group: RunGroup) -> tuple[float, float] | None:
    """The spread of a configuration's repeated CPU timings (ms/image): from the lowest first quartile to the
    highest third quartile of its runs' 20 timed calls (the run medians where a run recorded no quartiles);
    ``None`` when there is no spread to judge by (one run that recorded none)."""
    runs = [r for r in group.runs if r.latency_ms_per_image is not None]
    if not runs or (len(runs) == 1 and not runs[0].latency_ms_quartiles):
        return None
    lows = [r.latency_ms_quartiles[0] if r.latency_ms_quartiles else r.latency_ms_per_image for r in runs]
    highs = [r.latency_ms_quartiles[1] if r.latency_ms_quartiles else r.latency_ms_per_image for r in runs]
    return float(min(lows)), float(max(highs))


def _latency(group: RunGroup) -> str:
    low, high = latency_spread(group)
    return f"{group.mean_of('latency_ms_per_image'):.2f} ms/image (repeated timings {low:.2f}-{high:.2f})"


def _speed(groups: Sequence[RunGroup]) -> list[str]:
    """The best configuration against the fastest one of another architecture or input size."""
    if len(groups) < 2 or latency_spread(groups[0]) is None:
        return []
    best = groups[0]
    others = [g for g in groups[1:] if _other_model(g, best) and latency_spread(g) is not None]
    if not others:
        return []
    fastest = min(others, key=lambda g: (g.mean_of("latency_ms_per_image"), g.best_run.run_id))
    (best_low, best_high), high = latency_spread(best), latency_spread(fastest)[1]
    unit = "CPU, batch 1"
    if high < best_low:
        ratio = best.mean_of("latency_ms_per_image") / fastest.mean_of("latency_ms_per_image")
        return [f"- **{fastest.label}** is faster at inference than the best model, {best.label}: {_latency(fastest)} "
                f"against {_latency(best)}, {ratio:.1f}x ({unit}); {_cost(fastest, best)}."]
    if best_high < min(latency_spread(g)[0] for g in others):
        return [f"- **{best.label}**, the best model, is also the fastest at inference: {_latency(best)} against "
                f"{_latency(fastest)} for {fastest.label}, the fastest other model ({unit})."]
    return [f"- Inference speed does not separate **{best.label}** ({_latency(best)}) from **{fastest.label}** "
            f"({_latency(fastest)}): their repeated timings overlap ({unit}), so neither is called faster."]


def _size(groups: Sequence[RunGroup]) -> list[str]:
    """The best configuration against the smallest other architecture, when one is at least 10 % smaller."""
    if len(groups) < 2 or groups[0].best_run.params_total is None:
        return []
    best = groups[0]
    others = [g for g in groups[1:] if g.model != best.model and g.best_run.params_total is not None]
    if not others:
        return []
    smallest = min(others, key=lambda g: (g.best_run.params_total, g.best_run.run_id))
    size, best_size = smallest.best_run.params_total, best.best_run.params_total
    if size * 1.1 <= best_size:
        return [f"- **{smallest.label}** is smaller than the best model, {best.label}: {size / 1e6:.2f} M parameters "
                f"against {best_size / 1e6:.2f} M, {best_size / size:.1f}x fewer; {_cost(smallest, best)}."]
    if best_size * 1.1 <= size:
        return [f"- **{best.label}**, the best model, is also the smallest: {best_size / 1e6:.2f} M parameters against "
                f"{size / 1e6:.2f} M for {smallest.label}, the smallest other model."]
    return []


def _calibration(groups: Sequence[RunGroup]) -> list[str]:
    """The best calibrated configuration by its mean validation ECE over seeds."""
    have = sorted((g for g in groups if g.values("ece")), key=lambda g: (g.mean("ece"), g.best_run.run_id))
    if not have:
        return []
    best = have[0]
    if len(have) == 1:
        return [f"- **{best.label}** has a validation ECE of {_over_seeds(best.values('ece'))} (0 is perfect calibration)."]
    worst, second = have[-1], have[1]
    text = (f"- **{best.label}** is the best calibrated configuration: validation ECE {_over_seeds(best.values('ece'))} "
            f"(the worst: {worst.label}, {_over_seeds(worst.values('ece'))})")
    spread = (best.std("ece") or 0.0) + (second.std("ece") or 0.0)
    if second.mean("ece") - best.mean("ece") <= spread:
        text += f"; the runner-up, {second.label} ({_over_seeds(second.values('ece'))}), is within the seeds' spread"
    return [text + "."]


def _confidence(groups: Sequence[RunGroup]) -> list[str]:
    """Mean top-class probability on the new images (raw) against accuracy there, per configuration."""
    stats = []
    for group in groups:
        modes = [((r.comparison or {}).get("modes") or {}).get("raw") for r in group.runs]
        modes = [m for m in modes if m and m.get("mean_confidence") is not None]
        if modes:
            stats.append((float(np.mean([m["mean_confidence"] for m in modes])), group, modes))
    if not stats:
        return []
    confidence, group, modes = max(stats, key=lambda t: (t[0], t[1].best_run.run_id))
    values = [float(m["mean_confidence"]) for m in modes]
    text = (f"- **{group.label}** is the most confident on the new images: mean top-class probability "
            if len(stats) > 1 else f"- On the new images, **{group.label}** has a mean top-class probability of ")
    text += f"{_over_seeds(values)} over {modes[0]['images']} image(s) (raw, no crop)"
    accuracies = [float(m["accuracy"]) for m in modes if m.get("accuracy") is not None]
    if accuracies:
        accuracy = float(np.mean(accuracies))
        text += f", against an accuracy of {_over_seeds(accuracies)} on {modes[0]['labelled']} labelled image(s)"
        if confidence == accuracy:
            text += ", so its confidence matches its accuracy"
        else:
            kind = "over" if confidence > accuracy else "under"
            text += f", so it is {kind}-confident by {_points(confidence, accuracy)}"
    return [text + "."]


def _confused_pair(record: RunRecord) -> str | None:
    if not record.confusion:
        return None
    names, counts = record.confusion["class_names"], record.confusion["counts"]
    pairs = [
        (counts[i][j], i, j)
        for i in range(len(names))
        for j in range(len(names))
        if i != j and counts[i][j] > 0
    ]
    if not pairs:
        return "No validation image was confused with another class."
    count, i, j = max(pairs, key=lambda p: (p[0], -p[1], -p[2]))
    support = sum(counts[i])
    return (
        f"The most frequent confusion is true **{names[i]}** predicted as **{names[j]}**: {count} of "
        f"{support} {names[i]} validation images ({100 * count / support:.1f}%)."
    )


def _weakest_class(record: RunRecord) -> str | None:
    classes = {k: v for k, v in (record.per_class or {}).items() if v.get("support", 0) > 0}
    if not classes:
        return None
    name, m = min(classes.items(), key=lambda kv: (kv[1]["f1"], kv[0]))
    return (
        f"The weakest class is **{name}**: F1 {m['f1']:.3f} (precision {m['precision']:.3f}, "
        f"recall {m['recall']:.3f}, {int(m['support'])} validation images)."
    )


def _crop_effect(record: RunRecord) -> str | None:
    modes = (record.comparison or {}).get("modes") or {}
    raw, haar = modes.get("raw"), modes.get("haar")
    if not raw or not haar:
        return None
    if raw.get("accuracy") is not None and haar.get("accuracy") is not None:
        diff = float(haar["accuracy"]) - float(raw["accuracy"])
        verdict = "helped" if diff > 0 else ("hurt" if diff < 0 else "made no difference")
        text = f"On the new images the Haar face crop {verdict}"
        text += f" ({'+' if diff > 0 else '-'}{_points(diff, 0)})" if diff else ""
        text += (
            f": accuracy {raw['accuracy']:.3f} raw ({raw['labelled']} labelled) vs {haar['accuracy']:.3f} "
            f"cropped ({haar['labelled']} labelled)"
        )
    else:
        text = "The new images carry no labels, so the Haar face crop's effect on accuracy is unknown"
    effects = Counter(c.get("effect") for c in (record.comparison or {}).get("changes", []))
    text += (
        f"; the crop fixed {effects['fixed by crop']} prediction(s), broke {effects['broken by crop']} "
        f"and changed the winner of {effects['changed (both wrong)'] + effects['changed']} more"
    )
    text += f"; no face was found in {haar.get('no_face', 0)} of {haar['images']} image(s)"
    if any(p.get("fallback") for p in record.predictions.get("haar", [])):
        text += " (the whole image was scored for those)"
    raw_scores = {p["image"]: p["scores"] for p in record.predictions.get("raw", [])}
    same = sum(
        1
        for p in record.predictions.get("haar", [])
        if p["image"] in raw_scores
        and all(abs(v - raw_scores[p["image"]].get(c, -1.0)) < 1e-6 for c, v in p["scores"].items())
    )
    if same:
        text += f"; the cropped scores equal the raw ones on {same} of {haar['images']} image(s)"
    if haar["images"] < raw["images"]:
        text += (
            f"; only {haar['images']} of {raw['images']} images were scored cropped "
            "(the rest had no face and no fallback)"
        )
    return text + "."


def _overfitting(record: RunRecord) -> str | None:
    rows = [r for r in record.history if "train/acc" in r and "val/acc" in r]
    if not rows:
        return None
    last = rows[-1]
    train, val = float(last["train/acc"]), float(last["val/acc"])
    if train > val:
        relation = f"so train is {_points(train, val)} above validation"
    elif train < val:
        relation = f"so validation is {_points(train, val)} above train"
    else:
        relation = "with no gap"
    config = record.config or {}
    mixed = bool(config.get("train.mixup_alpha") or config.get("train.cutmix_alpha"))
    measured = ("augmented batches mixed by mixup/CutMix, so it understates the fit" if mixed
                else "augmented batches")
    return (
        f"Overfitting check: at the last epoch ({int(last['epoch'])}) train accuracy is {train:.3f} and "
        f"validation accuracy {val:.3f}, {relation} (train accuracy is measured on {measured})."
    )


def _best_epoch_note(record: RunRecord) -> str | None:
    if record.best_epoch is None or record.epochs_run is None:
        return None
    if record.best_epoch == record.epochs_run:
        return (
            f"The best epoch is the last one ({record.best_epoch} of {record.epochs_run}): {record.monitor} "
            "was still improving when training stopped, so more epochs may help."
        )
    return (
        f"The best epoch is {record.best_epoch} of {record.epochs_run}: {record.monitor} did not improve "
        f"in the last {record.epochs_run - record.best_epoch} epoch(s)."
    )
