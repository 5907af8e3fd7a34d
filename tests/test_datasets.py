"""Data layer: layout checks, bad files, every image mode, the decode-once cache."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from research.data.classes import CANONICAL_CLASSES, UnknownClassError
from research.data.datasets import DatasetLayoutError, find_split_dir, load_datasets
from research.data.images import ImageDecodeError, load_image

FOLDERS = ("alegria", "disgusto", "enojo", "miedo", "seriedad", "sorpresa", "tristeza")


def make_dataset(root: Path, *, folders=FOLDERS, per_class: int = 2, splits=("train", "validation"), size=(20, 24)) -> Path:
    rng = np.random.default_rng(0)
    for split in splits:
        for folder in folders:
            d = root / split / folder
            d.mkdir(parents=True, exist_ok=True)
            for k in range(per_class):
                Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(d / f"{k}.png")
    return root


def test_loads_spanish_layout_with_counts(tmp_path):
    bundle = load_datasets(make_dataset(tmp_path / "d", per_class=3), cache=True)
    assert len(bundle.train) == 21 and len(bundle.val) == 21
    assert bundle.class_counts["train"] == {c: 3 for c in CANONICAL_CLASSES}
    x, y = bundle.train[0]
    assert x.shape == (3, 20, 24) and 0 <= y < 7


def test_english_and_spanish_layouts_give_the_same_labels(tmp_path):
    es = load_datasets(make_dataset(tmp_path / "es", folders=("alegria",) + FOLDERS[1:]), require_all_classes=False)
    en_folders = ("happy", "disgust", "angry", "fear", "neutral", "surprise", "sad")
    en = load_datasets(make_dataset(tmp_path / "en", folders=en_folders), require_all_classes=False)
    assert es.class_counts == en.class_counts
    assert sorted(es.train.targets) == sorted(en.train.targets)


@pytest.mark.parametrize("spelling", ["val", "valid", "test"])
def test_validation_spellings(tmp_path, spelling, caplog):
    root = make_dataset(tmp_path / "d", splits=("train", spelling))
    assert find_split_dir(root, "validation").name == spelling
    assert len(load_datasets(root).val) == 14


def test_missing_split_is_a_clear_error(tmp_path):
    root = make_dataset(tmp_path / "d", splits=("train",))
    with pytest.raises(DatasetLayoutError, match="no 'validation' split .* expected one of validation/, val/"):
        load_datasets(root)


def test_missing_root(tmp_path):
    with pytest.raises(DatasetLayoutError, match="does not exist.*fetch-data"):
        load_datasets(tmp_path / "nope")


def test_empty_class_folder_is_named(tmp_path):
    root = make_dataset(tmp_path / "d")
    for f in (root / "train" / "miedo").iterdir():
        f.unlink()
    with pytest.raises(DatasetLayoutError, match="miedo has no images"):
        load_datasets(root)


def test_classes_differ_between_splits(tmp_path):
    root = make_dataset(tmp_path / "d")
    make_dataset(tmp_path / "d", folders=FOLDERS[:-1], splits=("x",))
    import shutil

    shutil.rmtree(root / "validation" / "tristeza")
    with pytest.raises(DatasetLayoutError, match=r"only in train \['sadness'\]"):
        load_datasets(root)


def test_missing_canonical_class_error_and_opt_out(tmp_path):
    root = make_dataset(tmp_path / "d", folders=FOLDERS[:5])
    with pytest.raises(DatasetLayoutError, match="require_all_classes=false"):
        load_datasets(root)
    assert len(load_datasets(root, require_all_classes=False).train) == 10


def test_no_class_folders(tmp_path):
    (tmp_path / "d" / "train").mkdir(parents=True)
    (tmp_path / "d" / "validation").mkdir(parents=True)
    with pytest.raises(DatasetLayoutError, match="has no class folders"):
        load_datasets(tmp_path / "d")


def test_unknown_class_folder(tmp_path):
    root = make_dataset(tmp_path / "d", folders=(*FOLDERS, "contempt"))
    with pytest.raises(UnknownClassError, match="contempt"):
        load_datasets(root)


def make_bad_files_dataset(root: Path) -> Path:
    """A dataset whose train/alegria holds a truncated JPEG, a text file named .jpg and a .txt."""
    root = make_dataset(root)
    folder = root / "train" / "alegria"
    good = folder / "0.png"
    jpeg = folder / "trunc.jpg"
    Image.fromarray(np.full((40, 40, 3), 128, np.uint8)).save(jpeg, quality=90)
    jpeg.write_bytes(jpeg.read_bytes()[:200])  # truncated JPEG
    (folder / "text.jpg").write_text("this is not an image")
    (folder / "notes.txt").write_text("not an image either")
    assert good.exists()
    return root


@pytest.fixture
def bad_files_dataset(tmp_path) -> Path:
    return make_bad_files_dataset(tmp_path / "d")


def test_bad_files_fail_by_default_naming_each_file(bad_files_dataset):
    with pytest.raises(ImageDecodeError) as err:
        load_datasets(bad_files_dataset)
    message = str(err.value)
    assert "trunc.jpg" in message and "text.jpg" in message and "data.bad_files=skip" in message


def test_bad_files_skipped_are_reported_and_counted(bad_files_dataset, caplog):
    bundle = load_datasets(bad_files_dataset, bad_files="skip")
    skipped = {p.name for p, _ in bundle.skipped}
    assert skipped == {"trunc.jpg", "text.jpg", "notes.txt"}
    assert len(bundle.train) == 14  # the good images only
    assert "3 file(s) left out" in caplog.text


def _save(path: Path, img: Image.Image, **kw) -> Path:
    img.save(path, **kw)
    return path


def test_every_image_mode_decodes_to_rgb_uint8(tmp_path):
    gray = Image.fromarray(np.tile(np.arange(32, dtype=np.uint8) * 8, (16, 1)))
    rgba = Image.new("RGBA", (10, 12), (255, 0, 0, 0))
    cases = {
        "gray.png": _save(tmp_path / "gray.png", gray),
        "rgba.png": _save(tmp_path / "rgba.png", rgba),
        "palette.png": _save(tmp_path / "palette.png", Image.new("RGB", (8, 8), (0, 0, 255)).convert("P")),
        "cmyk.jpg": _save(tmp_path / "cmyk.jpg", Image.new("CMYK", (9, 7), (0, 255, 255, 0))),
        "i16.png": _save(tmp_path / "i16.png", Image.fromarray(np.tile(np.arange(0, 60000, 2000, dtype=np.uint16), (4, 1)))),
        "la.png": _save(tmp_path / "la.png", Image.new("LA", (5, 5), (100, 255))),
    }
    for name, path in cases.items():
        arr = load_image(path)
        assert arr.dtype == np.uint8 and arr.ndim == 3 and arr.shape[2] == 3, name
    assert (load_image(cases["rgba.png"]) == 255).all()  # transparent -> white background
    assert tuple(load_image(cases["cmyk.jpg"])[3, 4]) == pytest.approx((255, 0, 0), abs=8)
    i16 = load_image(cases["i16.png"])
    assert i16[0, 0, 0] == 0 and i16[0, -1, 0] == 255  # rescaled, not saturated


def test_exif_rotation_is_applied(tmp_path):
    img = Image.new("RGB", (30, 10), (0, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 CW when displayed
    img.save(tmp_path / "rot.jpg", exif=exif)
    assert load_image(tmp_path / "rot.jpg").shape[:2] == (30, 10)


def test_cache_shrinks_and_matches_uncached(tmp_path):
    root = make_dataset(tmp_path / "d", size=(80, 60))
    cached = load_datasets(root, cache=True, keep_size=32)
    lazy = load_datasets(root, cache=False, keep_size=32)
    assert cached.train.images is not None and lazy.train.images is None
    assert max(cached.train.load(0).shape[:2]) == 32
    np.testing.assert_array_equal(cached.train.load(3), lazy.train.load(3))


def test_demo_root_uses_same_api():
    bundle = load_datasets("demo", demo_scale=0.02, seed=1)
    assert bundle.synthetic and len(bundle.train) >= 7 and len(bundle.val) >= 7
    x, y = bundle.train[0]
    assert x.ndim == 3 and isinstance(y, int)


@pytest.mark.skipif(not (Path(__file__).resolve().parents[2] / "shared/data/emociones-dev").is_dir(), reason="../shared/data/emociones-dev absent")
def test_real_emociones_dev_loads():
    root = Path(__file__).resolve().parents[2] / "shared/data/emociones-dev"
    bundle = load_datasets(root, cache=True, keep_size=48)
    assert len(bundle.train) == 2006 and len(bundle.val) == 501
    assert all(n > 0 for n in bundle.class_counts["train"].values())
