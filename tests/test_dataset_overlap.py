"""benchmarks/dataset_overlap.py finds resized and mirrored copies, and not different images."""

from __future__ import annotations

import numpy as np
from PIL import Image

from tests.conftest import load_benchmark


def face(seed: int) -> np.ndarray:
    """A smooth random 48 px image (blurred noise, so resizing keeps it recognisable)."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (8, 8), dtype=np.uint8)
    return np.asarray(Image.fromarray(small).resize((48, 48), Image.BICUBIC))


def test_copies_are_found_and_other_images_are_not(tmp_path, capsys):
    b, a = tmp_path / "source" / "train" / "happy", tmp_path / "target"
    b.mkdir(parents=True)
    for i in range(6):
        Image.fromarray(face(i)).save(b / f"{i}.png")
    (a / "validation" / "alegria").mkdir(parents=True)
    (a / "train" / "alegria").mkdir(parents=True)
    Image.fromarray(face(2)).resize((350, 350), Image.BILINEAR).save(a / "validation" / "alegria" / "copy.jpg", quality=90)
    Image.fromarray(face(4)[:, ::-1]).convert("RGB").save(a / "validation" / "alegria" / "mirror.png")
    Image.fromarray(face(100)).save(a / "validation" / "alegria" / "other.png")
    Image.fromarray(face(101)).save(a / "train" / "alegria" / "other.png")

    overlap = load_benchmark("dataset_overlap")
    assert overlap.main([str(a), str(tmp_path / "source"), "--show", "3"]) == 0
    out = capsys.readouterr().out
    rows = {line.split("|")[1].strip(): line.split("|")[2:-1] for line in out.splitlines() if line.startswith("| ") and "part of" not in line}
    assert rows["validation"][0].strip() == "3" and rows["validation"][-1].strip() == "2"  # the two copies
    assert rows["train"][-1].strip() == "0"
    pairs = [line.split() for line in out.splitlines() if line.startswith("  ")]
    assert {(p[1], p[2]) for p in pairs[:2]} == {("validation/alegria/copy.jpg", "train/happy/2.png"),
                                                 ("validation/alegria/mirror.png", "train/happy/4.png")}
    assert all(float(p[0]) >= 0.98 for p in pairs[:2]) and float(pairs[2][0]) < 0.98


def test_a_missing_folder_is_exit_code_2(tmp_path, caplog):
    assert load_benchmark("dataset_overlap").main([str(tmp_path / "nowhere"), str(tmp_path)]) == 2
    assert "is not a folder of images" in caplog.text


def test_crop_faces_keeps_faceless_images_whole(tmp_path, capsys):
    """--crop-faces: images where the Haar cascade finds no face (these noise patterns) are compared whole,
    so the copies are still found."""
    b, a = tmp_path / "b" / "x", tmp_path / "a" / "y"
    b.mkdir(parents=True)
    a.mkdir(parents=True)
    for i in range(3):
        Image.fromarray(face(i)).save(b / f"{i}.png")
    Image.fromarray(face(1)).resize((200, 200), Image.BILINEAR).save(a / "copy.png")
    assert load_benchmark("dataset_overlap").main([str(tmp_path / "a"), str(tmp_path / "b"), "--crop-faces", "--show", "1"]) == 0
    out = capsys.readouterr().out
    assert "largest Haar face of each image" in out
    assert out.splitlines()[-1].split()[1:] == ["y/copy.png", "x/1.png"]


def test_an_unreadable_image_or_a_tiny_size_is_exit_code_2(tmp_path, caplog):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    Image.fromarray(face(0)).save(a / "ok.png")
    (b / "broken.jpg").write_bytes(b"not an image")
    overlap = load_benchmark("dataset_overlap")
    assert overlap.main([str(a), str(b)]) == 2
    assert "broken.jpg" in caplog.text and "remove or replace the file" in caplog.text
    caplog.clear()
    assert overlap.main([str(a), str(a), "--size", "0"]) == 2
    assert "--size 0 is too small" in caplog.text
