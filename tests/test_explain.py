"""Grad-CAM: a target layer for every registered model and for timm models, heatmaps over the model
input written by ``predict`` (and not with ``--no-gradcam``), and the report's Grad-CAM sheet, read back."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from urllib.parse import unquote

import numpy as np
import pytest
import torch
from PIL import Image

from research.cli import predict_main
from research.data.demo import write_demo_new_images
from research.inference.explain import DISPLAY_MIN, GradCamError, explain_run, gradcam_maps, overlay
from research.inference.loaded import load_run, predict_arrays
from research.inference.predict import predict_folder
from research.models import cam_target_layer, create_model, list_models
from research.report import report_cli

TIMM_MODELS = ("timm/tf_efficientnet_lite0", "timm/resnet10t", "timm/mobilenetv3_small_050")
SIZE = 64  # 2x2 feature maps for the stride-32 backbones: the smallest size whose heatmap can vary


@pytest.fixture(scope="module")
def photo_folder(tmp_path_factory) -> Path:
    """7 demo "photos" (one face per class on a larger canvas) and a flat grey image with no face."""
    folder = tmp_path_factory.mktemp("photos")
    write_demo_new_images(folder, per_class=1)
    Image.fromarray(np.full((90, 160, 3), 128, np.uint8)).save(folder / "anger_2.png")
    return folder


def face_like(channels: int, size: int = SIZE, batch: int = 2) -> torch.Tensor:
    """A non-degenerate input: two dark 'eyes' and a 'mouth' on a gradient, plus a little noise."""
    y, x = np.mgrid[0:size, 0:size] / size
    image = 0.3 + 0.4 * x
    for cy, cx, r in ((0.35, 0.3, 0.08), (0.35, 0.7, 0.08), (0.72, 0.5, 0.12)):
        image[(y - cy) ** 2 + (x - cx) ** 2 < r**2] = -1.0
    noise = np.random.default_rng(0).normal(0, 0.1, (batch, channels, size, size))
    return torch.tensor(image[None, None] + noise, dtype=torch.float32)


def calibrate_batch_norm(model: torch.nn.Module, inputs: torch.Tensor) -> torch.nn.Module:
    """Set every batch norm's running statistics to those of ``inputs`` (as training would), then eval mode.
    Untrained, torchvision's efficientnet_b0 shrinks its activations to about 1e-14 in eval mode: a
    degenerate network whose heatmap is numerical noise."""
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.reset_running_stats()
            module.momentum = None  # cumulative average: one batch sets the statistics
    with torch.no_grad():
        model.train()(inputs)
    return model.eval()


@pytest.mark.parametrize("name", [*list_models(), *TIMM_MODELS])
def test_every_model_has_a_gradcam_layer_that_explains_it(name):
    torch.manual_seed(0)
    in_chans = 1 if name.startswith("scratch") else 3
    inputs = face_like(in_chans)
    model = calibrate_batch_norm(create_model(name, 7, pretrained=False, in_chans=in_chans), inputs)
    winners = model(inputs).argmax(1).tolist()
    maps = gradcam_maps(model, cam_target_layer(model, name), inputs, winners)
    assert maps.shape == (2, SIZE, SIZE) and maps.dtype == np.float32
    assert maps.min() >= 0.0 and maps.max() <= 1.0
    # Grad-CAM keeps only positive evidence: with random weights a winner can have none on a 2x2 map
    # (an all-zero heatmap, as the library defines it), so one varying heatmap of the two is required.
    assert any(m.max() - m.min() > 0.1 for m in maps), f"{name}: every heatmap is (nearly) constant"
    assert all(p.grad is None for p in model.parameters())  # no gradients left behind


def test_frozen_backbone_and_grayscale_backbone_are_explained():
    model = create_model("resnet18", 7, pretrained=False, in_chans=1).eval()
    model.freeze_backbone()  # layer4 has no trainable parameters: the input carries the gradient
    inputs = face_like(1)
    maps = gradcam_maps(model, cam_target_layer(model, "resnet18"), inputs, model(inputs).argmax(1).tolist())
    assert maps.shape == (2, SIZE, SIZE) and any(m.max() - m.min() > 0.1 for m in maps)


def test_unknown_layer_and_unsupported_layer_are_clear_errors():
    model = create_model("scratch_cnn_small", 7, pretrained=False)
    with pytest.raises(KeyError, match="unknown model"):
        cam_target_layer(model, "no_such_model")
    # a 2-D output (the flattened head) has no spatial map to explain
    with pytest.raises(GradCamError, match="Grad-CAM cannot explain"):
        gradcam_maps(model, model.net.head[0], face_like(1), [0, 0])


@pytest.mark.parametrize("channels", [1, 3])
def test_overlay_is_rgb_uint8_of_the_input_size(channels):
    image = np.linspace(0, 1, 48 * 40, dtype=np.float32).reshape(48, 40)
    if channels == 3:
        image = np.stack([image, 1 - image, image], axis=2)
    cam = np.zeros((48, 40), np.float32)
    cam[10:20, 5:15] = 1.0
    out = overlay(image, cam)
    assert out.shape == (48, 40, 3) and out.dtype == np.uint8
    assert (out[15, 10] != out[40, 35]).any()
    with pytest.raises(ValueError, match="differ in size"):
        overlay(image, cam[:10])


def test_explain_run_uses_the_prediction_inputs(trained_run, photo_folder):
    loaded = load_run(trained_run)
    images = [np.asarray(Image.open(p).convert("RGB")) for p in sorted(photo_folder.rglob("*.png"))]
    probs, tensors = predict_arrays(loaded, images)
    maps = explain_run(loaded, tensors, probs.argmax(1).tolist())
    assert maps.shape == (len(images), *tensors.shape[-2:])


def read_png(path: Path) -> np.ndarray:
    assert path.is_file(), path
    return np.asarray(Image.open(path).convert("RGB"))


def assert_not_constant(pixels: np.ndarray, what: object) -> None:
    gray = pixels.astype(float).mean(axis=2)
    assert gray.max() - gray.min() > 20, f"{what} is (nearly) constant"


def test_predict_writes_gradcam_images_and_sheet(trained_run, photo_folder, tmp_path):
    out = tmp_path / "out"
    result = predict_folder(trained_run, photo_folder, face="both", out=out)
    size = load_run(trained_run).cfg.data.image_size
    factor = -(-DISPLAY_MIN // size)
    for mode in ("raw", "haar"):
        saved = json.loads((out / mode / "predictions.json").read_text())
        assert len(saved) == 8 and "gradcam_overlay" not in saved[0]
        for record in saved:
            pixels = read_png(out / mode / record["gradcam"])
            assert record["gradcam"].startswith("gradcam/")
            assert pixels.shape == (size * factor, size * factor, 3)
            assert_not_constant(pixels, record["gradcam"])
        assert all(r["gradcam_overlay"].shape == (size, size, 3) for r in result["modes"][mode])
    sheet = read_png(out / "gradcam_sheet.png")
    assert sheet.shape[0] > 8 * 160 and sheet.shape[1] > 4 * 160  # 8 rows of 2 modes x (input, Grad-CAM)
    assert_not_constant(sheet, "gradcam_sheet.png")


def test_no_gradcam_writes_none(trained_run, photo_folder, tmp_path):
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as e:
        predict_main(["--run", str(trained_run), str(photo_folder), "--out", str(out), "--wandb", "disabled", "--no-gradcam"])
    assert e.value.code == 0
    assert (out / "raw" / "predictions.json").is_file()
    assert not list(out.rglob("*gradcam*"))
    assert all("gradcam" not in r for r in json.loads((out / "haar" / "predictions.json").read_text()))


def test_report_embeds_the_gradcam_sheet(trained_run, photo_folder, tmp_path):
    run = tmp_path / "runs" / trained_run.name
    shutil.copytree(trained_run, run, ignore=shutil.ignore_patterns("wandb", "predictions"))
    predict_folder(run, photo_folder, face="both")
    out = report_cli([run.parent], tmp_path / "reports" / "results.md")
    markdown = out.read_text()
    new_images = markdown.split("## New images", 1)[1].split("\n## ", 1)[0]
    (link,) = re.findall(r"!\[Grad-CAM, raw / haar\]\(([^)]+)\)", new_images)
    assert not link.startswith(("/", "http"))
    assert_not_constant(read_png(out.parent / unquote(link)), link)

    again = report_cli([run.parent], out, include_new_image_figures=False).read_text()
    assert "Grad-CAM" not in again and not list((out.parent / "figures").rglob("*gradcam*"))


def test_gradcam_sheet_colours_right_and_wrong_winners_and_shows_the_true_label(tmp_path):
    """Issue 26, item 17: a right winner green, a wrong one red, unknown truth black; the true label is shown."""
    from research.inference.explain import RIGHT, SHEET_CELL, UNKNOWN, WRONG, plot_gradcam_sheet

    def record(image: str, winner: str, true: str | None) -> dict:
        return {"image": image, "winner": winner, "confidence": 0.9, "true": true,
                "preprocessed": np.full((32, 32), 0.5, np.float32), "gradcam_overlay": np.full((32, 32, 3), 128, np.uint8)}

    records = [record("right.png", "happiness", "happiness"), record("wrong.png", "anger", "happiness"),
               record("unknown.png", "anger", None)]
    path = plot_gradcam_sheet({"raw": records}, tmp_path / "sheet.png")
    sheet = read_png(path).astype(int)
    gap, label_h, head_h, row_h = 6, 24, 30, 24 + SHEET_CELL + 6

    def caption_colours(row: int) -> set[tuple[int, int, int]]:
        top = head_h + row * row_h
        right = 2 * gap + 2 * SHEET_CELL  # the Grad-CAM cell's right edge, where the caption ends
        band = sheet[top : top + label_h, right - SHEET_CELL + 40 : right].reshape(-1, 3)  # clear of the name
        return {tuple(p) for p in band if abs(p - 255).sum() > 60}  # the text's pixels

    def near(colours: set, colour: tuple[int, int, int]) -> bool:
        return any(sum(abs(a - b) for a, b in zip(c, colour, strict=True)) < 40 for c in colours)

    assert near(caption_colours(0), RIGHT) and not near(caption_colours(0), WRONG)
    assert near(caption_colours(1), WRONG) and not near(caption_colours(1), RIGHT)
    assert near(caption_colours(2), UNKNOWN) and not near(caption_colours(2), WRONG) and not near(caption_colours(2), RIGHT)
    # the row label carries the true label: more ink than the same name without it
    with_truth = plot_gradcam_sheet({"raw": [records[0]]}, tmp_path / "a.png")
    without = plot_gradcam_sheet({"raw": [{**records[0], "true": None}]}, tmp_path / "b.png")
    ink = lambda p: int((read_png(p)[head_h : head_h + label_h, : 2 * SHEET_CELL - 120] < 128).sum())  # noqa: E731
    assert ink(with_truth) > ink(without) + 50
