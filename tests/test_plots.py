"""Every plot writes a readable PNG; confusion heatmaps carry their annotations."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
import torch
from matplotlib.text import Text
from PIL import Image

from research import plots
from research.data.classes import CANONICAL_CLASSES

RAW_MODE_TEXT = "raw mode:\nno face detection,\nwhole image scored"
CROP_GREY = 235  # the empty crop panel's face colour, "0.92"


def crop_panel_text_lines(path: Path) -> int:
    """Lines of dark text inside the empty (grey) crop panel of a saved prediction panel; 0 without one.

    The crop panel is the second of the four axes; it is found in the PNG as the rows where most of
    that column range is the grey face colour, so the count is of what was drawn, wherever it is.
    """
    with Image.open(path) as image:
        pixels = np.asarray(image.convert("L")).astype(int)
    width = pixels.shape[1]
    left, _, crop_w, _ = plots._panel_rects(*plots.PANEL_SIZE, note=False)[1]
    columns = pixels[:, round(left * width) + 5 : round((left + crop_w) * width) - 5]
    grey_rows = np.flatnonzero((np.abs(columns - CROP_GREY) <= 1).mean(axis=1) > 0.5)
    if grey_rows.size == 0:
        return 0
    inside = columns[grey_rows.min() : grey_rows.max() + 1]
    dark_rows = (inside < 100).any(axis=1)
    # A line of text is a run of rows holding dark pixels.
    return int(np.count_nonzero(dark_rows[1:] & ~dark_rows[:-1]) + dark_rows[0])


def assert_png(path: Path, min_side: int = 200) -> tuple[int, int]:
    assert path.is_file() and path.stat().st_size > 0
    with Image.open(path) as image:
        image.load()
        assert image.format == "PNG"
        width, height = image.size
    assert width >= min_side and height >= min_side
    assert width <= 6000 and height <= 6000
    return width, height


def history_rows(epochs: int) -> list[dict[str, float]]:
    rows = []
    for epoch in range(1, epochs + 1):
        row = {"epoch": epoch, "lr": 1e-3 * 0.5 ** (epoch - 1)}
        for split, offset in (("train", 0.0), ("val", 0.05)):
            row[f"{split}/loss"] = 2.0 / epoch + offset
            for key in ("acc", "top2", "macro_f1"):
                row[f"{split}/{key}"] = min(1.0, 0.3 + 0.1 * epoch - offset)
        rows.append(row)
    return rows


@pytest.mark.parametrize("epochs", [1, 5])
def test_plot_curves_writes_every_curve(tmp_path: Path, epochs: int) -> None:
    paths = plots.plot_curves(history_rows(epochs), tmp_path, title_suffix="(synthetic demo data)")
    names = sorted(p.name for p in paths)
    assert names == sorted(f"curves_{k}.png" for k in ("loss", "acc", "top2", "macro_f1", "lr"))
    for path in paths:
        assert path.parent == tmp_path
        assert_png(path)


def line_colours(path: Path, colours: dict[str, str]) -> set[str]:
    """Which of ``colours`` (name -> matplotlib colour) cover at least 200 pixels of the PNG."""
    from matplotlib.colors import to_rgb

    with Image.open(path) as image:
        pixels = np.asarray(image.convert("RGB")).astype(int)
    found = set()
    for name, colour in colours.items():
        rgb = np.array([round(c * 255) for c in to_rgb(colour)])
        if (np.abs(pixels - rgb).max(axis=2) <= 8).sum() >= 200:
            found.add(name)
    return found


def test_the_lr_curve_draws_every_parameter_group(tmp_path: Path) -> None:
    rows = history_rows(4)
    for row in rows:
        row.update({"lr/head": row["lr"], "lr/backbone_1": row["lr"] * 0.5, "lr/backbone_0": row["lr"] * 0.4})
    (path,) = [p for p in plots.plot_curves(rows, tmp_path) if p.name == "curves_lr.png"]
    cycle = {"tab:blue": "tab:blue", "tab:orange": "tab:orange", "tab:green": "tab:green", "tab:red": "tab:red"}
    assert line_colours(path, cycle) == {"tab:blue", "tab:orange", "tab:green"}  # three groups, three lines
    (old,) = [p for p in plots.plot_curves(history_rows(4), tmp_path / "old") if p.name == "curves_lr.png"]
    assert line_colours(old, {"tab:purple": "tab:purple", **cycle}) == {"tab:purple"}  # a run with the lr column only


def test_plot_curves_accepts_dataframe_and_best_epoch(tmp_path: Path) -> None:
    frame = pd.DataFrame(history_rows(3)).drop(columns=["lr", "train/top2", "val/top2"])
    paths = plots.plot_curves(frame, tmp_path, best_epoch=2)
    assert sorted(p.name for p in paths) == [
        "curves_acc.png",
        "curves_loss.png",
        "curves_macro_f1.png",
    ]


def test_draw_confusion_annotations() -> None:
    counts = np.arange(49).reshape(7, 7)
    fig, ax = plt.subplots()
    plots.draw_confusion(ax, counts, CANONICAL_CLASSES, normalized=False)
    texts = [t.get_text() for t in ax.texts]
    assert len(texts) == 49 and texts[:3] == ["0", "1", "2"]
    assert [t.get_text() for t in ax.get_xticklabels()] == list(CANONICAL_CLASSES)
    assert ax.get_xlabel() == "predicted" and ax.get_ylabel() == "true"
    plt.close(fig)

    normalized = counts / counts.sum(axis=1, keepdims=True)
    fig, ax = plt.subplots()
    plots.draw_confusion(ax, normalized, CANONICAL_CLASSES, normalized=True)
    texts = [t.get_text() for t in ax.texts]
    assert texts[1] == f"{normalized[0, 1]:.2f}"
    assert all(len(t.split(".")[1]) == 2 for t in texts)
    plt.close(fig)


@pytest.mark.parametrize("normalized", [False, True])
def test_plot_confusion_writes_png(tmp_path: Path, normalized: bool) -> None:
    rng = np.random.default_rng(0)
    matrix = rng.integers(0, 20, size=(7, 7))
    if normalized:
        matrix = matrix / matrix.sum(axis=1, keepdims=True)
    path = plots.plot_confusion(
        matrix, CANONICAL_CLASSES, tmp_path / "cm.png", normalized=normalized, title="val"
    )
    assert_png(path, min_side=500)


def test_plot_confusion_rejects_mismatched_names(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        plots.plot_confusion(np.zeros((3, 3)), ["a", "b"], tmp_path / "x.png", normalized=False)


def test_plot_reliability(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(60, 7)) * 2
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    targets = rng.integers(0, 7, size=60)
    assert_png(plots.plot_reliability(probs, targets, tmp_path / "rel.png", title="val"))


def panel_kwargs(tmp_path: Path, name: str) -> dict[str, object]:
    rng = np.random.default_rng(0)
    scores = dict(zip(CANONICAL_CLASSES, rng.dirichlet(np.ones(7)), strict=True))
    return {
        "name": name,
        "original": rng.integers(0, 256, size=(120, 160, 3), dtype=np.uint8),
        "model_input": rng.random((48, 48)),
        "scores": scores,
        "winner": max(scores, key=scores.get),
        "path": tmp_path / f"{name}.png",
    }


@pytest.mark.parametrize(
    ("with_face", "true_label"), [(True, "anger"), (False, None), (True, None), (False, "fear")]
)
def test_plot_prediction_panel(tmp_path: Path, with_face: bool, true_label: str | None) -> None:
    kwargs = panel_kwargs(tmp_path, "img")
    box = (40, 20, 60, 60) if with_face else None
    crop = kwargs["original"][20:80, 40:100] if with_face else None
    path = plots.plot_prediction_panel(
        box=box,
        crop=crop,
        true_label=true_label,
        note="" if with_face else "no face found: whole image used",
        **kwargs,
    )
    width, height = assert_png(path)
    assert width > 2 * height


def test_plot_prediction_panel_rgb_float_input(tmp_path: Path) -> None:
    kwargs = panel_kwargs(tmp_path, "rgb")
    kwargs["model_input"] = np.random.default_rng(1).random((64, 64, 3)) * 1.2 - 0.1
    assert_png(plots.plot_prediction_panel(box=None, crop=None, true_label=None, **kwargs))


def test_plot_prediction_panel_rejects_unknown_winner(tmp_path: Path) -> None:
    kwargs = panel_kwargs(tmp_path, "bad")
    kwargs["winner"] = "boredom"
    with pytest.raises(ValueError):
        plots.plot_prediction_panel(box=None, crop=None, true_label=None, **kwargs)


def test_plot_prediction_sheet(tmp_path: Path) -> None:
    panels = [
        plots.plot_prediction_panel(
            box=None, crop=None, true_label=None, **panel_kwargs(tmp_path, f"p{i}")
        )
        for i in range(3)
    ]
    sheet = plots.plot_prediction_sheet(panels, tmp_path / "sheet.png", title="predictions", cols=2)
    sheet_w, sheet_h = assert_png(sheet)
    panel_w, panel_h = assert_png(panels[0])
    assert sheet_h > panel_h * 1.5 * min(1.0, sheet_w / (2 * panel_w))
    with pytest.raises(ValueError):
        plots.plot_prediction_sheet([], tmp_path / "empty.png")


def test_plot_model_comparison(tmp_path: Path) -> None:
    rows = [
        {"model": "scratch_cnn", "val/acc": 0.41, "val/macro_f1": 0.35},
        {"model": "resnet18", "val/acc": 0.62, "val/macro_f1": 0.58},
        {"model": "mobilenet_v3_small", "val/acc": 0.55, "val/macro_f1": None},
    ]
    path = plots.plot_model_comparison(rows, ["val/acc", "val/macro_f1"], tmp_path / "cmp.png")
    assert_png(path)


def test_denormalize_round_trip() -> None:
    rng = np.random.default_rng(0)
    image = rng.random((3, 8, 6)).astype(np.float32)
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    normalized = (image - np.array(mean).reshape(3, 1, 1)) / np.array(std).reshape(3, 1, 1)
    out = plots.denormalize(torch.from_numpy(normalized.astype(np.float32)), mean, std)
    assert out.shape == (8, 6, 3)
    np.testing.assert_allclose(out, image.transpose(1, 2, 0), atol=1e-5)

    gray = plots.denormalize(np.full((1, 4, 4), 10.0), [0.5], [0.5])
    assert gray.shape == (4, 4) and gray.max() == 1.0
    with pytest.raises(ValueError):
        plots.denormalize(np.zeros((3, 4, 4)), [0.5, 0.5], [0.5, 0.5])


def drawn_texts(fig) -> list[str]:
    return [t.get_text() for t in fig.findobj(Text) if t.get_text()]


@pytest.mark.parametrize(
    ("mode", "with_face", "crop_text", "crop_title", "lines"),
    [
        ("raw", False, RAW_MODE_TEXT, "face crop (not used)", 3),
        ("haar", False, "no face found", "face crop", 1),
        ("haar", True, None, "face crop", 0),
    ],
)
def test_prediction_panel_says_what_the_mode_did(
    tmp_path: Path, mode: str, with_face: bool, crop_text: str | None, crop_title: str, lines: int
) -> None:
    kwargs = panel_kwargs(tmp_path, f"img [{mode}]")
    path = kwargs.pop("path")
    panels = plots.PredictionPanels()
    box, crop = ((40, 20, 60, 60), kwargs["original"][20:80, 40:100]) if with_face else (None, None)
    panel = dict(box=box, crop=crop, true_label="anger", detection_run=mode == "haar", **kwargs)

    texts = drawn_texts(panels.draw(**panel))
    assert panels.axes[1].get_title() == crop_title
    if crop_text is not None:
        assert crop_text in texts
    assert not any("no face found" in t for t in texts) if mode == "raw" else RAW_MODE_TEXT not in texts
    if with_face:
        assert not any("no face found" in t or "raw mode" in t for t in texts)

    assert crop_panel_text_lines(panels.save(path, **panel)) == lines


def test_reused_panel_figure_draws_the_same_png_as_a_fresh_one(tmp_path: Path) -> None:
    """PredictionPanels clears what the previous panel drew: no box, crop, note or true-label colour leaks."""
    first = panel_kwargs(tmp_path, "first")
    first.pop("path")
    second = panel_kwargs(tmp_path, "second")
    second.pop("path")
    second["original"] = second["original"][:, :90]
    reused = plots.PredictionPanels()
    reused.save(
        tmp_path / "first.png", box=(40, 20, 60, 60), crop=first["original"][20:80, 40:100], true_label="fear",
        note="no face found: whole image used", **first,
    )
    args = dict(box=None, crop=None, true_label=None, detection_run=False, **second)
    again = reused.save(tmp_path / "reused.png", **args)
    fresh = plots.plot_prediction_panel(path=tmp_path / "fresh.png", **args)
    with Image.open(again) as a, Image.open(fresh) as b:
        assert a.size == b.size == (2040, 516)
        assert np.array_equal(np.asarray(a), np.asarray(b))


def test_sheet_title_sits_in_its_own_band_above_the_first_row(tmp_path: Path) -> None:
    panels = [
        plots.plot_prediction_panel(box=None, crop=None, true_label=None, **panel_kwargs(tmp_path, f"p{i}"))
        for i in range(4)
    ]
    sheet = plots.plot_prediction_sheet(panels, tmp_path / "sheet.png", title="r1: new images (raw)", cols=2)
    with Image.open(sheet) as image:
        pixels = np.asarray(image.convert("RGB")).astype(int)
    grey = pixels.mean(axis=2)
    left_half = grey[:, : pixels.shape[1] // 2]
    # The first panel's frame: the first row that is non-white across (nearly) the whole left tile.
    frame_top = int(np.flatnonzero((left_half < 250).mean(axis=1) > 0.95)[0])
    band = grey[:frame_top]
    dark_rows = np.flatnonzero((band < 80).any(axis=1))
    assert dark_rows.size > 5, "no title pixels above the first panel"
    assert dark_rows.max() < frame_top - 3, "the title reaches the first panel"
    # The title is centred in the band and the band itself holds nothing else.
    dark_cols = np.flatnonzero((band < 80).any(axis=0))
    assert abs((dark_cols.min() + dark_cols.max()) / 2 - pixels.shape[1] / 2) < 0.05 * pixels.shape[1]
    untitled = plots.plot_prediction_sheet(panels, tmp_path / "untitled.png", cols=2)
    with Image.open(untitled) as image:
        assert image.height == pixels.shape[0] - frame_top
