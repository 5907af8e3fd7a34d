"""Landmark alignment (dlib HOG + 5 points): level eyes, no-face path, the missing-extra message,
and raw / Haar / aligned side by side in predict, evaluate, train and the report, read back."""

from __future__ import annotations

import json
import logging
import pickle
import shutil
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from tests.conftest import FAST, face_photo

pytest.importorskip("dlib", reason="the align extra (poetry install --extras align) is not installed")

from research.faces.align import (
    AlignedCrop,
    AlignUnavailableError,
    LandmarkAligner,
    alignment_matrix,
    check_available,
    eye_centres,
)
from research.faces.geometry import NoFaceFoundError  # noqa: E402

INSTALL_HINT = "poetry install --extras align"


@pytest.fixture(scope="module")
def portrait() -> np.ndarray:
    return face_photo()  # 600x512x3 uint8 RGB, one frontal face


@pytest.fixture(scope="module")
def aligner() -> LandmarkAligner:
    return LandmarkAligner()


def rotate(image: np.ndarray, degrees: float) -> np.ndarray:
    h, w = image.shape[:2]
    matrix = cv2.getRotationMatrix2D((w / 2, h / 2), degrees, 1.0)
    return cv2.warpAffine(image, matrix, (w, h), borderMode=cv2.BORDER_REFLECT)


def tilt(left: np.ndarray, right: np.ndarray) -> float:
    dx, dy = np.asarray(right) - np.asarray(left)
    return float(np.degrees(np.arctan2(dy, dx)))


@pytest.mark.parametrize("degrees", [-20.0, 0.0, 15.0])
def test_rotated_face_comes_out_with_level_eyes(aligner, portrait, degrees) -> None:
    tilted = rotate(portrait, degrees)
    result = aligner(tilted, name="portrait")
    assert isinstance(result, AlignedCrop) and result.found and not result.fallback
    assert abs(tilt(*eye_centres(result.landmarks))) > abs(degrees) - 8  # the input really is tilted
    # The landmarks carried through the warp: eyes level, at the configured distance and height.
    warped = np.c_[result.landmarks, np.ones(5)] @ result.matrix.T
    left, right = eye_centres(warped)
    side = result.image.shape[0]
    assert result.image.shape == (side, side, 3)
    assert abs(left[1] - right[1]) < 0.5
    assert np.hypot(*(right - left)) == pytest.approx(aligner.eye_distance * side, abs=1.0)
    assert (left[1] + right[1]) / 2 == pytest.approx(aligner.eye_y * side, abs=1.0)
    assert (left[0] + right[0]) / 2 == pytest.approx(side / 2, abs=1.0)
    # And on the pixels: the landmarks found again in the aligned crop are level too.
    again = aligner(result.image)
    assert again.found and abs(tilt(*eye_centres(again.landmarks))) < 4.0


@pytest.mark.parametrize("angle", [-40, -5, 0, 30])
def test_alignment_matrix_levels_any_eye_line(angle) -> None:
    left = np.array([100.0, 80.0])
    right = left + 50 * np.array([np.cos(np.radians(angle)), np.sin(np.radians(angle))])
    matrix, side = alignment_matrix(left, right, eye_distance=0.25, eye_y=0.4)
    out = np.c_[np.stack([left, right]), np.ones(2)] @ matrix.T
    assert side == 200
    np.testing.assert_allclose(out, [[75, 80], [125, 80]], atol=1e-6)


@pytest.mark.parametrize("kind", ["flat", "noise"])
def test_no_face_falls_back_to_the_whole_image(aligner, kind) -> None:
    rng = np.random.default_rng(0)
    image = np.full((120, 200, 3), 128, np.uint8) if kind == "flat" else rng.integers(0, 255, (120, 200, 3), dtype=np.uint8)
    result = aligner(image)
    assert not result.found and result.fallback and result.box is None and result.landmarks is None
    assert np.array_equal(result.image, image) and result.crop_box == (0, 0, 200, 120)
    with pytest.raises(NoFaceFoundError, match="landmark aligner"):
        LandmarkAligner(fallback=False)(image, name="blank.png")


@pytest.mark.parametrize(
    "kwargs", [{"eye_distance": 0}, {"eye_distance": 1.2}, {"eye_y": 1.0}, {"upsample": 4}, {"pad": -1}, {"upscale_to": -1}]
)
def test_bad_parameters(kwargs) -> None:
    with pytest.raises(ValueError):
        LandmarkAligner(**kwargs)


# --- the optional extra is missing -------------------------------------------------------------
def _hide_dlib(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "dlib", None)  # `import dlib` now raises ImportError


def test_missing_dlib_names_the_extra(monkeypatch) -> None:
    _hide_dlib(monkeypatch)
    with pytest.raises(AlignUnavailableError, match=INSTALL_HINT):
        check_available()
    with pytest.raises(AlignUnavailableError, match=INSTALL_HINT):
        LandmarkAligner()  # even with the models already cached in this process


def test_missing_landmark_model_names_the_extra(monkeypatch) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "face_recognition_models" else real(name, *a))
    with pytest.raises(AlignUnavailableError, match="shape_predictor_5_face_landmarks.dat.*" + INSTALL_HINT):
        check_available()


# --- predict / evaluate / train / report --------------------------------------------------------
@pytest.fixture(scope="module")
def face_folder(tmp_path_factory, portrait) -> Path:
    """Labelled photos: the portrait upright and tilted (faces), a flat image (no face)."""
    folder = tmp_path_factory.mktemp("faces") / "photos"
    folder.mkdir()
    Image.fromarray(portrait).save(folder / "happiness_1.jpg")
    Image.fromarray(rotate(portrait, 20)).save(folder / "happiness_2.jpg")
    Image.fromarray(np.full((90, 160, 3), 128, np.uint8)).save(folder / "anger_1.png")
    return folder


def test_predict_face_all_side_by_side(trained_run, face_folder, tmp_path) -> None:
    from research.cli import predict_main

    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exit_info:
        predict_main(["--run", str(trained_run), str(face_folder), "--face", "all", "--out", str(out), "--wandb", "disabled"])
    assert exit_info.value.code == 0
    comparison = json.loads((out / "comparison.json").read_text())
    assert list(comparison["modes"]) == ["raw", "haar", "aligned"]
    aligned, haar = comparison["modes"]["aligned"], comparison["modes"]["haar"]
    assert aligned["faces_found"] == 2 and aligned["no_face"] == 1 and aligned["labelled"] == 3
    assert haar["faces_found"] + haar["no_face"] == 3
    assert set(comparison["changes_by_mode"]) == {"haar", "aligned"}
    assert comparison["changes"] == comparison["changes_by_mode"]["haar"]
    records = {r["image"]: r for r in json.loads((out / "aligned" / "predictions.json").read_text())}
    assert records["happiness_2.jpg"]["face_found"] is True and records["anger_1.png"]["fallback"] is True
    for name in ("happiness_2.jpg", "anger_1.png"):
        panel = np.asarray(Image.open(out / "aligned" / records[name]["panel"]).convert("L"))
        assert panel.std() > 5
        stacked = np.asarray(Image.open(out / comparison["side_by_side"][name]).convert("L"))
        assert stacked.shape[0] == 3 * panel.shape[0] and stacked.std() > 5
        thirds = np.split(stacked, 3)
        assert not np.array_equal(thirds[1], thirds[2])  # haar and aligned panels differ


def test_evaluate_with_aligned_faces(trained_run, face_folder, tmp_path) -> None:
    from research.inference.evaluate import evaluate_run
    from research.inference.loaded import load_run

    result = evaluate_run(load_run(trained_run), face_folder, face="aligned", out=tmp_path / "eval")
    assert result.name == "photos-aligned"
    saved = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert saved["face"] == "aligned" and saved["images"] == 3 and saved["no_face"] == 1
    assert 0.0 <= saved["acc"] <= 1.0


def test_train_with_aligned_face_crop(tmp_path, tiny_dataset, caplog) -> None:
    from research.config import load_config
    from research.train import train

    cfg = load_config(None, [*FAST, f"data.root={tiny_dataset}", f"run.dir={tmp_path}", "run.name=aligned",
                             "data.face_crop=aligned"])
    with caplog.at_level(logging.INFO):
        summary = train(cfg)
    logged = [r.getMessage() for r in caplog.records if "face crop (aligned)" in r.getMessage()]
    assert len(logged) == 2, logged  # train and validation
    assert all("keep the whole image" in m for m in logged)
    assert "face_crop: aligned" in (Path(summary.run_dir) / "config.yaml").read_text()
    assert (Path(summary.run_dir) / "best.pt").is_file()
    from research.report.card import write_model_card

    card = write_model_card(Path(summary.run_dir), tmp_path / "card.md").read_text()
    assert "face crop: `aligned` during training" in card and "score new photos with `--face aligned`" in card


def test_face_crop_step_pickles_as_its_factory(tiny_dataset) -> None:
    from research.config import load_config
    from research.faces.factory import face_crop_step

    cfg = load_config(None, ["data.face_crop=aligned"])
    step = face_crop_step(cfg.data.face_crop, cfg.faces)
    image = np.full((60, 60, 3), 90, np.uint8)
    assert np.array_equal(step(image), image) and step.reset_counts() == (0, 1)
    clone = pickle.loads(pickle.dumps(step))
    assert isinstance(clone.cropper, LandmarkAligner) and clone.label == "aligned"
    assert face_crop_step(load_config(None, []).data.face_crop, cfg.faces) is None


def test_report_shows_raw_haar_aligned_side_by_side(trained_run, face_folder, tmp_path) -> None:
    from research.inference.predict import predict_folder
    from research.report import report_cli

    run = tmp_path / "runs" / "trained"
    shutil.copytree(trained_run, run, ignore=shutil.ignore_patterns("predictions", "wandb"))
    predict_folder(run, face_folder, face="all")
    markdown = report_cli([tmp_path / "runs"], tmp_path / "report" / "results.md").read_text()
    section = markdown[markdown.index("## New images"):]
    assert "Side by side (raw / haar / aligned):" in section
    assert "| | raw | haar | aligned |" in section
    comparison = json.loads((run / "predictions" / "comparison.json").read_text())
    aligned = comparison["modes"]["aligned"]
    assert f"| faces found | no detector | {comparison['modes']['haar']['faces_found']} of 3 | 2 of 3 |" in section
    accuracy_row = next(line for line in section.splitlines() if line.startswith("| accuracy |"))
    assert f"{aligned['accuracy']:.3f} (3 labelled)" in accuracy_row
    assert "| winners changed vs raw | - |" in section
    assert "face found (haar)" in section and "face found (aligned)" in section
    assert "aligned winner (score)" in section
