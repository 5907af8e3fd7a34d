"""Conclusions of the report, computed from the numbers; each bullet quotes the numbers it rests on."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

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
    # Speed, size and calibration compare configurations: each by its best run, not seed against seed.
    representatives = [group.best_run for group in group_runs(runs)]
    lines += _cost_of_speed(representatives)
    lines += _calibration(representatives)
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


def _scored(runs: Sequence[RunRecord], metric: str) -> list[RunRecord]:
    return [r for r in runs if r.score(metric) is not None]


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


def _cost_of_speed(runs: Sequence[RunRecord]) -> list[str]:
    scored = _scored(runs, "macro_f1")
    if len(scored) < 2:
        return []
    best = scored[0]
    lines = []
    for attr, what, unit, short_unit, fewer in (
        ("latency_ms_per_image", "the fastest at inference", "ms/image on CPU at batch 1", "ms/image", "faster than"),
        ("params_total", "the smallest", "M parameters", "M", "fewer parameters than"),
    ):
        have = [r for r in scored if getattr(r, attr) is not None]
        if len(have) < 2 or getattr(best, attr) is None:
            continue
        pick = min(have, key=lambda r: (getattr(r, attr), r.run_id))
        scale = 1e6 if attr == "params_total" else 1.0
        value, best_value = getattr(pick, attr) / scale, getattr(best, attr) / scale
        if pick is best:
            lines.append(f"- **{best.label}**, the best model, is also {what} ({value:.2f} {unit}).")
            continue
        f1_pick, f1_best = float(pick.score("macro_f1")), float(best.score("macro_f1"))
        if f1_pick == f1_best:
            cost = f"at the same macro-F1 ({f1_pick:.3f})"
        elif f1_pick < f1_best:
            cost = f"it gives up {_points(f1_best, f1_pick)} of macro-F1 ({f1_pick:.3f} vs {f1_best:.3f})"
        else:
            cost = f"it gains {_points(f1_pick, f1_best)} of macro-F1 ({f1_pick:.3f} vs {f1_best:.3f})"
        ratio = f"{best_value / value:.1f}x {fewer}" if value > 0 else f"{fewer}"
        lines.append(
            f"- **{pick.label}** is {what}: {value:.2f} {unit}, {ratio} the best model, "
            f"{best.label} ({best_value:.2f} {short_unit}); {cost}."
        )
    return lines


def _calibration(runs: Sequence[RunRecord]) -> list[str]:
    lines = []
    have = sorted(_scored(runs, "ece"), key=lambda r: (float(r.score("ece")), r.run_id))
    if have:
        best = have[0]
        if len(have) == 1:
            lines.append(f"- **{best.label}** has a validation ECE of {best.score('ece'):.3f} (0 is perfect calibration).")
        else:
            worst = have[-1]
            lines.append(
                f"- **{best.label}** is the best calibrated: lowest validation ECE, {best.score('ece'):.3f} "
                f"(the worst is {worst.label} at {worst.score('ece'):.3f})."
            )
    confident = []
    for record in runs:
        stats = ((record.comparison or {}).get("modes") or {}).get("raw")
        if stats and stats.get("mean_confidence") is not None:
            confident.append((float(stats["mean_confidence"]), record, stats))
    if confident:
        confidence, record, stats = max(confident, key=lambda t: (t[0], t[1].run_id))
        text = (
            f"- **{record.label}** is the most confident on the new images: mean top-class probability "
            if len(confident) > 1
            else f"- On the new images, **{record.label}** has a mean top-class probability of "
        )
        text += f"{confidence:.3f} over {stats['images']} image(s) (raw, no crop)"
        if stats.get("accuracy") is not None:
            acc = float(stats["accuracy"])
            text += f", against an accuracy of {acc:.3f} on {stats['labelled']} labelled image(s)"
            if confidence == acc:
                text += ", so its confidence matches its accuracy"
            else:
                kind = "over" if confidence > acc else "under"
                text += f", so it is {kind}-confident by {_points(confidence, acc)}"
        lines.append(text + ".")
    return lines


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
