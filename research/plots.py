"""Figures for runs, evaluations and new-image predictions.

Every ``plot_*`` function writes one PNG, closes its figure (so long sweeps don't leak
memory; prediction panels and sheets use bare figures that pyplot never holds) and returns
the path. The Agg backend is selected before pyplot is imported so
plotting works on headless machines and in worker processes. seaborn and pandas (with
scipy behind seaborn, about 2 s of imports together) are imported by the functions that use
them, so ``predict``, which draws only prediction panels, does not load them.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402
from PIL import Image, ImageDraw  # noqa: E402

from research.engine.metrics import expected_calibration_error, reliability_bins  # noqa: E402

if TYPE_CHECKING:
    import pandas as pd

logger = logging.getLogger(__name__)

DPI = 120
TRAIN_STYLE: dict[str, object] = {"color": "tab:blue", "marker": "o", "linestyle": "-"}
VAL_STYLE: dict[str, object] = {"color": "tab:orange", "marker": "s", "linestyle": "--"}
# metric key suffix -> (axis label, higher is better)
CURVE_METRICS: dict[str, tuple[str, bool]] = {
    "loss": ("loss (training criterion)", False),
    "acc": ("accuracy", True),
    "top2": ("top-2 accuracy", True),
    "macro_f1": ("macro F1", True),
}
WINNER_COLOR = "tab:red"
OTHER_COLOR = "tab:gray"
TRUE_COLOR = "tab:green"


def _join_title(*parts: str) -> str:
    return " ".join(part.strip() for part in parts if part and part.strip())


def _save(fig: Figure, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI, bbox_inches="tight")
    plt.close(fig)
    logger.debug("wrote %s", path)
    return path


def _history_frame(history: Sequence[Mapping[str, float]] | pd.DataFrame) -> pd.DataFrame:
    import pandas as pd

    frame = history.copy() if isinstance(history, pd.DataFrame) else pd.DataFrame(list(history))
    if frame.empty:
        raise ValueError("history is empty: nothing to plot")
    if "epoch" not in frame.columns:
        frame["epoch"] = np.arange(1, len(frame) + 1)
    return frame.sort_values("epoch").reset_index(drop=True)


def plot_curves(
    history: Sequence[Mapping[str, float]] | pd.DataFrame,
    out_dir: Path,
    title_suffix: str = "",
    *,
    best_epoch: int | None = None,
    train_label: str = "train",
) -> list[Path]:
    """Train vs validation curves per epoch: ``curves_{loss,acc,top2,macro_f1}.png`` (+ ``curves_lr.png``,
    the learning rate of every parameter group).

    Args:
        history: one row per epoch with ``epoch``, ``train/<m>``, ``val/<m>``, ``lr`` and ``lr/<group>``.
        out_dir: folder the PNGs are written to.
        title_suffix: appended to every title, e.g. ``"(synthetic demo data)"``.
        best_epoch: the epoch whose checkpoint was kept; marked on every curve. When
            ``None``, each figure marks the best validation epoch of its own metric.
        train_label: legend of the training curve, e.g. ``"train (mixup/CutMix batches)"`` when its
            metrics were measured on mixed images (higher loss, lower accuracy than validation).

    Returns:
        The written paths; a metric missing from ``history`` is skipped.
    """
    frame = _history_frame(history)
    out_dir = Path(out_dir)
    epochs = frame["epoch"].to_numpy()
    paths: list[Path] = []
    for key, (label, higher_is_better) in CURVE_METRICS.items():
        columns = [
            (f"{split}/{key}", name) for split, name in (("train", train_label), ("val", "validation"))
        ]
        if not any(column in frame.columns for column, _ in columns):
            continue
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for (column, name), style in zip(columns, (TRAIN_STYLE, VAL_STYLE), strict=True):
            if column in frame.columns:
                ax.plot(
                    epochs, frame[column].to_numpy(dtype=float), label=name, markersize=6, **style
                )
        if "val/" + key in frame.columns:
            _mark_best(
                ax, epochs, frame["val/" + key].to_numpy(dtype=float), higher_is_better, best_epoch
            )
        _style_epoch_axis(ax, epochs)
        ax.set_ylabel(label)
        if higher_is_better:
            ax.set_ylim(0.0, 1.05)
        else:
            values = frame[[c for c, _ in columns if c in frame.columns]].to_numpy(dtype=float)
            values = values[np.isfinite(values)]
            # Headroom above the highest point so the best-epoch ring is not cut off.
            ax.set_ylim(0.0, 1.12 * values.max() if values.size and values.max() > 0 else 1.0)
        ax.set_title(_join_title(f"{label}: train vs validation", title_suffix))
        ax.legend(loc="best")
        paths.append(_save(fig, out_dir / f"curves_{key}.png"))

    lr_path = _plot_learning_rates(frame, epochs, out_dir, title_suffix)
    return paths + ([lr_path] if lr_path is not None else [])


def _plot_learning_rates(frame: pd.DataFrame, epochs: np.ndarray, out_dir: Path, title_suffix: str) -> Path | None:
    """``curves_lr.png``: one line per parameter group (``lr/head``, ``lr/backbone``, ...), or the single
    ``lr`` column of runs recorded before every group was logged."""
    columns = [c for c in frame.columns if c.startswith("lr/")] or [c for c in ("lr",) if c in frame.columns]
    if not columns:
        return None
    fig, ax = plt.subplots(figsize=(7, 3.5))
    all_rates = []
    for column in columns:
        rates = frame[column].to_numpy(dtype=float)
        all_rates.append(rates)
        ax.plot(epochs, rates, marker="o", markersize=5, label=column.removeprefix("lr/"),
                **({"color": "tab:purple"} if len(columns) == 1 else {}))
    finite = np.concatenate(all_rates)
    finite = finite[np.isfinite(finite)]
    if finite.size and np.all(finite > 0):
        ax.set_yscale("log")
    _style_epoch_axis(ax, epochs)
    ax.set_ylabel("learning rate")
    if len(columns) > 1:
        ax.legend(loc="best", title="parameter group")
    ax.set_title(_join_title("learning-rate schedule", title_suffix))
    return _save(fig, out_dir / "curves_lr.png")


def _style_epoch_axis(ax: Axes, epochs: np.ndarray) -> None:
    ax.set_xlabel("epoch")
    if len(epochs) <= 20:
        ax.set_xticks(epochs)
    else:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    # A single epoch would otherwise get a zero-width x range.
    ax.set_xlim(float(epochs.min()) - 0.5, float(epochs.max()) + 0.5)
    ax.grid(True, alpha=0.3)


def _mark_best(
    ax: Axes,
    epochs: np.ndarray,
    values: np.ndarray,
    higher_is_better: bool,
    best_epoch: int | None,
) -> None:
    finite = np.isfinite(values)
    if not finite.any():
        return
    if best_epoch is not None and best_epoch in epochs:
        index = int(np.flatnonzero(epochs == best_epoch)[0])
        label = "selected checkpoint"
    else:
        masked = np.where(finite, values, -np.inf if higher_is_better else np.inf)
        index = int(np.argmax(masked) if higher_is_better else np.argmin(masked))
        label = "best validation"
    epoch, value = epochs[index], values[index]
    ax.axvline(epoch, color="0.4", linestyle=":", linewidth=1)
    ax.plot(
        [epoch],
        [value],
        marker="o",
        markersize=16,
        markerfacecolor="none",
        markeredgecolor="black",
        markeredgewidth=2,
        linestyle="none",
        label=f"{label}: epoch {epoch} ({value:.3f})",
        zorder=5,
        clip_on=False,
    )


def draw_confusion(
    ax: Axes,
    matrix: np.ndarray,
    class_names: Sequence[str],
    *,
    normalized: bool,
    row_counts: Sequence[int] | None = None,
) -> Axes:
    """Annotated heatmap of a ``(C, C)`` confusion matrix on ``ax`` (rows true, columns predicted).

    ``row_counts`` (images per true class) go into the row labels, ``"fear (n=4)"``: a row-normalised
    matrix otherwise hides that 0.25 / 0.25 / 0.50 may be four images.
    """
    matrix = np.asarray(matrix)
    if matrix.shape != (len(class_names), len(class_names)):
        raise ValueError(
            f"matrix shape {matrix.shape} does not match {len(class_names)} class names"
        )
    import seaborn as sns

    if normalized:
        data, fmt, vmin, vmax = matrix.astype(float), ".2f", 0.0, 1.0
    else:
        data, fmt, vmin, vmax = np.rint(matrix).astype(np.int64), "d", 0, None
    sns.heatmap(
        data,
        annot=True,
        fmt=fmt,
        cmap="Blues",
        vmin=vmin,
        vmax=vmax,
        square=True,
        linewidths=0.5,
        linecolor="white",
        xticklabels=list(class_names),
        yticklabels=list(class_names)
        if row_counts is None
        else [f"{name} (n={int(n)})" for name, n in zip(class_names, row_counts, strict=True)],
        cbar_kws={"label": "fraction of true class" if normalized else "images", "shrink": 0.8},
        annot_kws={"fontsize": 10},
        ax=ax,
    )
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.tick_params(axis="x", labelrotation=45)
    ax.tick_params(axis="y", labelrotation=0)
    for tick in ax.get_xticklabels():
        tick.set_horizontalalignment("right")
        tick.set_rotation_mode("anchor")
    return ax


def plot_confusion(
    matrix: np.ndarray,
    class_names: Sequence[str],
    path: Path,
    *,
    normalized: bool,
    title: str = "",
    row_counts: Sequence[int] | None = None,
) -> Path:
    """Write an annotated confusion heatmap: integer counts, or row fractions 0.00-1.00
    (with ``row_counts``, the images of each true class in its row label)."""
    side = max(5.0, 0.9 * len(class_names) + 2.0)
    fig, ax = plt.subplots(figsize=(side + 1.0 + (0.6 if row_counts is not None else 0.0), side))
    draw_confusion(ax, matrix, class_names, normalized=normalized, row_counts=row_counts)
    default = "confusion matrix (row-normalised)" if normalized else "confusion matrix (counts)"
    ax.set_title(title or default)
    return _save(fig, path)


def plot_reliability(
    probs: np.ndarray, targets: np.ndarray, path: Path, n_bins: int = 15, title: str = ""
) -> Path:
    """Reliability diagram: per-bin accuracy vs mean confidence (``probs`` are (N, C) probabilities), and bin counts."""
    bins = reliability_bins(probs, targets, n_bins)
    ece = expected_calibration_error(probs, targets, n_bins)
    edges, count = bins["bin_edges"], bins["count"]
    centers, width = (edges[:-1] + edges[1:]) / 2, np.diff(edges)
    filled = count > 0

    fig, (ax, ax_count) = plt.subplots(
        2, 1, figsize=(6, 6.5), sharex=True, gridspec_kw={"height_ratios": [3, 1]}
    )
    ax.bar(
        centers[filled],
        bins["accuracy"][filled],
        width=width[filled],
        color="tab:blue",
        alpha=0.6,
        edgecolor="black",
        linewidth=0.5,
        label="accuracy",
    )
    ax.vlines(
        centers[filled],
        bins["accuracy"][filled],
        bins["confidence"][filled],
        color="tab:red",
        linewidth=2,
        label="gap (accuracy - confidence)",
    )
    ax.plot(
        centers[filled],
        bins["confidence"][filled],
        marker="D",
        markersize=5,
        color="tab:red",
        linestyle="none",
        label="mean confidence",
    )
    ax.plot([0, 1], [0, 1], linestyle="--", color="0.3", label="perfect calibration")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_ylabel("accuracy")
    ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=9)
    ax.set_title(f"{title or 'reliability diagram'} | ECE = {ece:.3f}")
    ax.grid(True, alpha=0.3)

    ax_count.bar(centers, count, width=width, color="0.5", edgecolor="black", linewidth=0.5)
    ax_count.set_xlabel("confidence (max softmax probability)")
    ax_count.set_ylabel("images")
    return _save(fig, path)


def _show_image(ax: Axes, image: np.ndarray) -> None:
    image = np.asarray(image)
    if np.issubdtype(image.dtype, np.floating):
        image = np.clip(image, 0.0, 1.0)
        vmax = 1.0
    else:
        vmax = 255
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.ndim == 2:
        ax.imshow(image, cmap="gray", vmin=0, vmax=vmax)
    else:
        ax.imshow(image)
    ax.set_xticks([])
    ax.set_yticks([])


# Prediction panels have a fixed layout (inches on a PANEL_SIZE figure) instead of tight_layout and
# bbox_inches="tight", which each lay the text out again, and PredictionPanels reuses one figure
# and its axes for every panel (creating the axes and their ticks cost a third of a panel). The
# score axis keeps PANEL_LABEL_W inches on its left for the class names ("happiness (true)").
PANEL_SIZE = (17.0, 4.3)
PANEL_MARGIN, PANEL_GAP, PANEL_LABEL_W, PANEL_RIGHT = 0.1, 0.25, 1.5, 0.25
PANEL_BOTTOM = 0.5  # the score axis's tick labels and "probability"
PANEL_TOP = 0.7  # suptitle + axes titles
PANEL_NOTE = 0.3  # one italic note line under the suptitle
PANEL_PNG = {"compress_level": 1}  # zlib level 1: several times faster to encode than the default 6


def _panel_rects(fig_w: float, fig_h: float, *, note: bool) -> list[tuple[float, float, float, float]]:
    """Figure-fraction rectangles of the original, crop, model-input (1 : 1 : 1) and score (1.35) axes."""
    image_w = (fig_w - 2 * PANEL_MARGIN - 2 * PANEL_GAP - PANEL_LABEL_W - PANEL_RIGHT) / 4.35
    height = fig_h - PANEL_BOTTOM - PANEL_TOP - (PANEL_NOTE if note else 0.0)
    lefts = [PANEL_MARGIN + i * (image_w + PANEL_GAP) for i in range(3)]
    lefts.append(lefts[-1] + image_w + PANEL_LABEL_W)
    widths = [image_w, image_w, image_w, 1.35 * image_w]
    return [(left / fig_w, PANEL_BOTTOM / fig_h, width / fig_w, height / fig_h) for left, width in zip(lefts, widths, strict=True)]


class PredictionPanels:
    """Draws and writes prediction panels (see :func:`plot_prediction_panel`) on one reused figure.

    Each :meth:`draw` removes what the previous panel added to the axes and redraws, so a panel
    is the same picture whether it is the first or the hundredth one drawn here.
    """

    def __init__(self) -> None:
        # A bare Figure (not pyplot's): no figure manager to register and close.
        self.fig = Figure(figsize=PANEL_SIZE, dpi=DPI)
        self.axes = [self.fig.add_axes(rect) for rect in _panel_rects(*PANEL_SIZE, note=False)]
        self._suptitle = self.fig.suptitle("", fontsize=14, fontweight="bold")
        self._note = self.fig.text(
            0.5, 1 - 0.43 / PANEL_SIZE[1], "", ha="center", va="top", fontsize=11, style="italic", color="0.25"
        )

    def _reset(self, *, note: bool) -> None:
        for ax, rect in zip(self.axes, _panel_rects(*PANEL_SIZE, note=note), strict=True):
            for container in list(ax.containers):
                container.remove()
            for artist in [*ax.images, *ax.patches, *ax.texts, *ax.lines, *ax.collections]:
                artist.remove()
            ax.set_position(rect)
            ax.set_facecolor("white")
            ax.set_aspect("auto")  # imshow set "equal"; the empty crop panel fills its box
            ax.relim()
            ax.autoscale(True)

    def draw(
        self,
        *,
        name: str,
        original: np.ndarray,
        box: tuple[int, int, int, int] | None,
        crop: np.ndarray | None,
        model_input: np.ndarray,
        scores: Mapping[str, float],
        winner: str,
        true_label: str | None,
        note: str = "",
        detection_run: bool = True,
    ) -> Figure:
        """Draw one image's prediction on the figure and return it (arguments as :func:`plot_prediction_panel`)."""
        if winner not in scores:
            raise ValueError(f"winner {winner!r} is not one of the scored classes {list(scores)}")
        self._reset(note=bool(note))
        ax_orig, ax_crop, ax_input, ax_scores = self.axes

        _show_image(ax_orig, original)
        ax_orig.set_title("original")
        if box is not None:
            x, y, w, h = box
            ax_orig.add_patch(Rectangle((x, y), w, h, fill=False, edgecolor="lime", linewidth=2.5))
            ax_orig.set_title("original + detected face")

        if crop is not None:
            _show_image(ax_crop, crop)
            ax_crop.set_title("face crop")
        else:
            ax_crop.set_facecolor("0.92")
            ax_crop.text(
                0.5,
                0.5,
                "no face found" if detection_run else "raw mode:\nno face detection,\nwhole image scored",
                ha="center",
                va="center",
                fontsize=14,
                transform=ax_crop.transAxes,
            )
            ax_crop.set_xticks([])
            ax_crop.set_yticks([])
            ax_crop.set_title("face crop" if detection_run else "face crop (not used)")

        _show_image(ax_input, model_input)
        height, width = np.asarray(model_input).shape[:2]
        ax_input.set_title(f"model input ({width}x{height})")

        _draw_scores(ax_scores, scores, winner, true_label)

        score = float(scores[winner])
        heading = f"{name}: predicted {winner} ({score:.2f})"
        if true_label is not None:
            verdict = "correct" if true_label == winner else "wrong"
            heading += f" | true: {true_label} -> {verdict}"
        self._suptitle.set_text(heading)
        self._suptitle.set_color("black" if true_label is None else ("tab:green" if true_label == winner else "tab:red"))
        self._note.set_text(note)
        return self.fig

    def save(self, path: Path, **panel: object) -> Path:
        """:meth:`draw` the panel and write it to ``path`` (PNG, ``PANEL_SIZE`` x ``DPI`` = 2040 x 516 px)."""
        self.draw(**panel)
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.fig.savefig(path, dpi=DPI, pil_kwargs=PANEL_PNG)
        logger.debug("wrote %s", path)
        return path


def plot_prediction_panel(
    *,
    name: str,
    original: np.ndarray,
    box: tuple[int, int, int, int] | None,
    crop: np.ndarray | None,
    model_input: np.ndarray,
    scores: Mapping[str, float],
    winner: str,
    true_label: str | None,
    path: Path,
    note: str = "",
    detection_run: bool = True,
) -> Path:
    """One image's prediction in 4 panels: original (+ face box), crop, model input, class scores.

    For many panels, :class:`PredictionPanels` draws the same PNGs faster by reusing its figure.

    Args:
        original: HxWx3 uint8 RGB photo as loaded.
        box: detected face ``(x, y, w, h)`` in ``original`` pixels, or ``None``.
        crop: the face crop, or ``None`` when no face was found.
        model_input: HxW or HxWx3, float in [0, 1] or uint8, already de-normalised.
        scores: probability per class name, in the order to list them.
        winner: predicted class name (a key of ``scores``).
        true_label: the known class name, or ``None``.
        path: the PNG to write (2040 x 516 px).
        note: extra line under the title, e.g. ``"no face found: whole image used"``.
        detection_run: False in raw mode, where no detector ran: the crop panel says so instead
            of "no face found".
    """
    return PredictionPanels().save(
        path, name=name, original=original, box=box, crop=crop, model_input=model_input, scores=scores,
        winner=winner, true_label=true_label, note=note, detection_run=detection_run,
    )


def _draw_scores(
    ax: Axes, scores: Mapping[str, float], winner: str, true_label: str | None
) -> None:
    names = list(scores)
    values = np.array([float(scores[n]) for n in names])
    positions = np.arange(len(names))
    colors = [WINNER_COLOR if n == winner else OTHER_COLOR for n in names]
    ax.barh(positions, values, color=colors, edgecolor="black", linewidth=0.5)
    for pos, value in zip(positions, values, strict=True):
        ax.text(min(value + 0.02, 0.86), pos, f"{value:.2f}", va="center", fontsize=9)
    ax.set_yticks(positions, labels=[f"{n} (true)" if n == true_label else n for n in names])
    for tick, n in zip(ax.get_yticklabels(), names, strict=True):
        # Both branches set both properties: PredictionPanels reuses the tick labels.
        tick.set_color(TRUE_COLOR if n == true_label else "black")
        tick.set_fontweight("bold" if n == true_label else "normal")
    if not ax.yaxis_inverted():
        ax.invert_yaxis()
    ax.set_xlim(0.0, 1.0)
    ax.set_xlabel("probability")
    ax.set_title("class scores (red = predicted)")
    ax.grid(True, axis="x", alpha=0.3)


SHEET_TITLE_H = 0.9  # inches kept free above the panels for the title
SHEET_GAP = 4  # pixels between neighbouring panels
SHEET_FRAME = (153, 153, 153)  # a thin grey frame keeps neighbouring panels visually apart


def plot_prediction_sheet(
    panel_paths: Sequence[Path], path: Path, *, title: str = "", cols: int = 2
) -> Path:
    """Tile prediction-panel PNGs into one contact sheet, ``cols`` per row, in the given order.

    The panels are pasted as pixels (shrunk, never enlarged, to keep the sheet under about
    3600 x 12000 px) below a white band of ``SHEET_TITLE_H`` inches that holds the title alone,
    so the title can never reach the first row.
    """
    if not panel_paths:
        raise ValueError("no panels to tile")
    images = []
    for panel_path in panel_paths:
        with Image.open(panel_path) as panel:
            images.append(panel.convert("RGB"))
    cols = max(1, min(cols, len(images)))
    rows = math.ceil(len(images) / cols)
    cell_h = max(img.height for img in images)
    cell_w = max(img.width for img in images)
    scale = min(1.0, 3600 / (cols * cell_w), 12000 / (rows * cell_h))
    tile_w, tile_h = round(cell_w * scale), round(cell_h * scale)
    band = round(SHEET_TITLE_H * DPI) if title else 0
    step_w, step_h = tile_w + 2 + SHEET_GAP, tile_h + 2 + SHEET_GAP  # 1 px frame on each side
    sheet = Image.new("RGB", (cols * step_w - SHEET_GAP, band + rows * step_h - SHEET_GAP), "white")
    if title:
        sheet.paste(_title_band(title, sheet.width, band), (0, 0))
    draw = ImageDraw.Draw(sheet)
    for index, image in enumerate(images):
        left, top = (index % cols) * step_w, band + (index // cols) * step_h
        if scale < 1.0:
            size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
            image = image.resize(size, Image.Resampling.LANCZOS)
        draw.rectangle((left, top, left + tile_w + 1, top + tile_h + 1), outline=SHEET_FRAME)
        sheet.paste(image, (left + 1 + (tile_w - image.width) // 2, top + 1 + (tile_h - image.height) // 2))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path, **PANEL_PNG)
    logger.debug("wrote %s", path)
    return path


def _title_band(title: str, width: int, height: int) -> Image.Image:
    """``title`` in bold 16 pt, centred, its top 0.15 in below the band's top edge: a white RGB image."""
    fig = Figure(figsize=(width / DPI, height / DPI), dpi=DPI)
    fig.text(0.5, 1 - 0.15 * DPI / height, title, ha="center", va="top", fontsize=16, fontweight="bold")
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return Image.fromarray(np.asarray(canvas.buffer_rgba())[:, :, :3])


def plot_model_comparison(
    rows: Sequence[Mapping[str, object]],
    metric_keys: Sequence[str],
    path: Path,
    title: str = "",
) -> Path:
    """Grouped bars: one group per metric, one bar per model (``row["model"]``); values in [0, 1]."""
    if not rows:
        raise ValueError("no models to compare")
    models = [str(row["model"]) for row in rows]
    n_models = len(models)
    bar_width = 0.8 / n_models
    positions = np.arange(len(metric_keys))
    fig, ax = plt.subplots(
        figsize=(max(6.0, 1.1 * len(metric_keys) * max(n_models, 2) / 2 + 3), 4.5)
    )
    import seaborn as sns

    palette = sns.color_palette("colorblind", n_models)
    for i, (model, row) in enumerate(zip(models, rows, strict=True)):
        values = np.array(
            [float(v) if (v := row.get(key)) is not None else np.nan for key in metric_keys]
        )
        offsets = positions - 0.4 + bar_width * (i + 0.5)
        bars = ax.bar(offsets, np.nan_to_num(values), bar_width, label=model, color=palette[i])
        labels = ["n/a" if np.isnan(v) else f"{v:.2f}" for v in values]
        ax.bar_label(bars, labels=labels, fontsize=8, padding=2)
    ax.set_xticks(positions, labels=list(metric_keys))
    ax.set_ylim(0.0, 1.1)
    ax.set_ylabel("score")
    ax.set_title(title or "model comparison")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), title="model")
    ax.grid(True, axis="y", alpha=0.3)
    return _save(fig, path)


def denormalize(tensor_chw: object, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """Undo ``(x - mean) / std`` on a CHW tensor or array: HxWxC (HxW for 1 channel) float in [0, 1]."""
    if hasattr(tensor_chw, "detach"):
        tensor_chw = tensor_chw.detach().cpu().numpy()
    array = np.asarray(tensor_chw, dtype=np.float32)
    if array.ndim != 3:
        raise ValueError(f"expected a CHW array, got shape {array.shape}")
    channels = array.shape[0]
    mean_arr = np.asarray(mean, dtype=np.float32).reshape(-1, 1, 1)
    std_arr = np.asarray(std, dtype=np.float32).reshape(-1, 1, 1)
    if mean_arr.shape[0] not in (1, channels) or std_arr.shape[0] not in (1, channels):
        raise ValueError(
            f"mean/std of length {len(mean)}/{len(std)} do not match {channels} channels"
        )
    image = np.clip(array * std_arr + mean_arr, 0.0, 1.0).transpose(1, 2, 0)
    return image[:, :, 0] if channels == 1 else image
