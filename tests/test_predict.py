"""New-image predictions: the run's own eval transform, raw vs Haar crop, labels from names, bad files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from research.data.datasets import load_datasets
from research.inference.loaded import load_run, predict_arrays
from research.inference.predict import predict_folder, read_new_images
from tests.conftest import SHARED_DATA, face_photo
from tests.test_plots import crop_panel_text_lines


@pytest.fixture()
def photo_folder(tmp_path) -> Path:
    folder = tmp_path / "photos"
    (folder / "alegria").mkdir(parents=True)
    Image.fromarray(face_photo()).save(folder / "happiness_1.jpg")  # a real face
    Image.fromarray(np.full((90, 160, 3), 128, np.uint8)).save(folder / "anger_2.png")  # no face, wide
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 40), dtype=np.uint8)).save(folder / "alegria" / "x.png")
    (folder / "notes.txt").write_text("not an image")
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff garbage")
    return folder


def test_predict_uses_the_runs_eval_transform(trained_run, tiny_dataset):
    loaded = load_run(trained_run)
    bundle = load_datasets(tiny_dataset, keep_size=loaded.cfg.data.image_size)
    image = bundle.val.load(0)
    bundle.val.transform = loaded.transform
    expected, _ = bundle.val[0]
    probs, tensors = predict_arrays(loaded, [image])
    assert torch.equal(tensors[0], expected)
    with torch.inference_mode():
        ref = torch.softmax(loaded.model(expected[None]), 1)[0].numpy()
    np.testing.assert_allclose(probs[0], ref, rtol=1e-5, atol=1e-6)


def test_read_new_images_labels_and_skips(photo_folder):
    images, skipped = read_new_images(photo_folder)
    by_name = {i.name: i.true for i in images}
    assert by_name == {"happiness_1.jpg": "happiness", "anger_2.png": "anger", "alegria/x.png": "happiness"}
    assert any("notes.txt" in s for s in skipped) and any("broken.jpg" in s for s in skipped)


def test_predict_raw_and_haar(trained_run, photo_folder, tmp_path):
    result = predict_folder(trained_run, photo_folder, face="both", out=tmp_path / "out")
    raw, haar = result["modes"]["raw"], result["modes"]["haar"]
    assert len(raw) == len(haar) == 3
    astronaut = next(r for r in haar if r["image"] == "happiness_1.jpg")
    assert astronaut["face_found"] is True and astronaut["box"] is not None
    flat = next(r for r in haar if r["image"] == "anger_2.png")
    assert flat["face_found"] is False and flat["fallback"] is True
    for r in raw + haar:
        assert sum(r["scores"].values()) == pytest.approx(1.0, abs=1e-4)
        assert r["winner"] == max(r["scores"], key=r["scores"].get)
        assert (tmp_path / "out" / r["mode"] / r["panel"]).stat().st_size > 1000
    for mode in ("raw", "haar"):
        saved = json.loads((tmp_path / "out" / mode / "predictions.json").read_text())
        assert len(saved) == 3 and "original" not in saved[0]
        assert (tmp_path / "out" / mode / "sheet.png").exists()
    comparison = json.loads((tmp_path / "out" / "comparison.json").read_text())
    assert comparison["modes"]["haar"]["no_face"] == 2 and comparison["modes"]["raw"]["labelled"] == 3
    assert "changes" in comparison


def test_no_fallback_skips_faceless_images(trained_run, photo_folder, tmp_path):
    result = predict_folder(trained_run, photo_folder, face="haar", out=tmp_path / "o", fallback=False)
    assert [r["image"] for r in result["modes"]["haar"]] == ["happiness_1.jpg"]


def test_predict_cli(trained_run, photo_folder, capsys):
    from research.cli import predict_main

    with pytest.raises(SystemExit) as e:
        predict_main(["--run", str(trained_run), str(photo_folder), "--face", "none", "--wandb", "offline"])
    assert e.value.code == 0
    assert (trained_run / "predictions" / "raw" / "predictions.json").exists()
    assert list((trained_run / "wandb").glob("offline-run-*-predict"))


def test_predict_errors(trained_run, tmp_path):
    from research.cli import predict_main

    (tmp_path / "empty").mkdir()
    for argv in (["--run", str(trained_run), str(tmp_path / "empty")], ["--run", str(tmp_path), str(tmp_path)]):
        with pytest.raises(SystemExit) as e:
            predict_main(argv)
        assert e.value.code == 2


@pytest.mark.skipif(not (SHARED_DATA / "new-images").is_dir(), reason="../shared/data/new-images absent")
def test_real_new_images(trained_run, tmp_path):
    result = predict_folder(trained_run, SHARED_DATA / "new-images", face="both", out=tmp_path / "real")
    assert len(result["modes"]["raw"]) == 14 and len(result["modes"]["haar"]) == 14
    assert all(r["true"] is not None for r in result["modes"]["raw"])


def test_raw_panels_say_no_detection_ran_and_haar_panels_say_no_face(trained_run, photo_folder, tmp_path):
    """Read back from the PNGs: the crop panel of the faceless photo has 3 lines in raw mode
    ("raw mode: / no face detection, / whole image scored") and 1 in haar mode ("no face found")."""
    result = predict_folder(trained_run, photo_folder, face="both", out=tmp_path / "out")
    panel = {
        (r["mode"], r["image"]): tmp_path / "out" / r["mode"] / r["panel"]
        for records in result["modes"].values() for r in records
    }
    assert crop_panel_text_lines(panel["raw", "anger_2.png"]) == 3
    assert crop_panel_text_lines(panel["haar", "anger_2.png"]) == 1
    assert crop_panel_text_lines(panel["raw", "happiness_1.jpg"]) == 3
    assert crop_panel_text_lines(panel["haar", "happiness_1.jpg"]) == 0  # the face crop is shown


def test_predict_loads_no_unused_heavy_module(tmp_path):
    """``predict --wandb disabled`` imports neither W&B nor the plotting/metrics libraries it does not use."""
    script = (
        "import sys; from pathlib import Path; import research.cli, research.inference.predict\n"
        "from research.tracking.wandb_log import WandbRun\n"
        f"run = WandbRun(run_id='x', run_dir=Path({str(tmp_path)!r}), config={{}}, mode='disabled')\n"
        "assert not run.enabled\n"
        "print(','.join(m for m in ('wandb', 'seaborn', 'pandas', 'sklearn') if m in sys.modules))\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_MODE")}
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True, timeout=300)
    assert out.stdout.strip() == ""


def test_photos_table_says_what_the_predictions_say(trained_run, photo_folder, tmp_path):
    """scripts/photos_table.py (the README's "What you get" table): one row per photo with each mode's
    winner and score as predict recorded them, and how many each mode got right."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
    try:
        from photos_table import read_modes, table
    finally:
        sys.path.pop(0)
    result = predict_folder(trained_run, photo_folder, face="both", out=tmp_path / "out", gradcam=False)
    text = table(read_modes(tmp_path / "out"))
    lines = text.splitlines()
    assert lines[0] == "| photo | true | raw | haar |" and len(lines) == 2 + 3 + 1
    for mode_index, mode in enumerate(("raw", "haar")):
        for r in result["modes"][mode]:
            row = next(line for line in lines if line.startswith(f"| {r['image']} |"))
            cell = row.split(" | ")[2 + mode_index]
            assert cell.startswith(f"{r['winner']} {r['confidence']:.2f}")
            assert ("✓" in cell) == (r["winner"] == r["true"])
            assert ("no face" in cell) == (mode == "haar" and not r["face_found"])
    right = {m: sum(r["winner"] == r["true"] for r in result["modes"][m]) for m in ("raw", "haar")}
    assert lines[-1] == f"| **right** | | **{right['raw']} of 3** | **{right['haar']} of 3** |"
    with pytest.raises(SystemExit, match="no <mode>/predictions.json"):
        read_modes(tmp_path)
