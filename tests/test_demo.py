"""Synthetic demo dataset: shapes, determinism, split sizes, folder layouts, learnability."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from research.data.classes import CANONICAL_CLASSES, SPANISH_NAMES
from research.data.demo import (
    DEMO_CLASS_COUNTS,
    ENGLISH_NAMES,
    demo_split_counts,
    make_demo_split,
    render_demo_face,
    write_demo_dataset,
    write_demo_new_images,
)


@pytest.mark.parametrize("size", [32, 64, 96])
@pytest.mark.parametrize("label", range(len(CANONICAL_CLASSES)))
def test_render_shape_dtype_and_grey(label: int, size: int) -> None:
    image = render_demo_face(label, np.random.default_rng(label), size=size)
    assert image.shape == (size, size, 3)
    assert image.dtype == np.uint8
    assert np.array_equal(image[:, :, 0], image[:, :, 1])
    assert np.array_equal(image[:, :, 0], image[:, :, 2])
    assert image.std() > 5  # not a blank canvas


def test_render_rejects_bad_label_and_size() -> None:
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="label"):
        render_demo_face(len(CANONICAL_CLASSES), rng)
    with pytest.raises(ValueError, match="size"):
        render_demo_face(0, rng, size=8)


def test_split_is_deterministic_by_seed() -> None:
    a_images, a_labels = make_demo_split("train", size=32, seed=7, scale=0.02)
    b_images, b_labels = make_demo_split("train", size=32, seed=7, scale=0.02)
    assert a_labels == b_labels
    assert all(np.array_equal(a, b) for a, b in zip(a_images, b_images, strict=True))


def test_different_seeds_and_splits_differ() -> None:
    seed0, _ = make_demo_split("train", size=32, seed=0, scale=0.02)
    seed1, _ = make_demo_split("train", size=32, seed=1, scale=0.02)
    val0, _ = make_demo_split("validation", size=32, seed=0, scale=0.1)
    assert not any(np.array_equal(a, b) for a, b in zip(seed0, seed1, strict=True))
    train_bytes = {img.tobytes() for img in seed0}
    assert not any(img.tobytes() in train_bytes for img in val0)


def test_default_counts_are_imbalanced_like_fer() -> None:
    assert set(DEMO_CLASS_COUNTS) == set(CANONICAL_CLASSES)
    assert 1_200 <= sum(DEMO_CLASS_COUNTS.values()) <= 1_600
    assert max(DEMO_CLASS_COUNTS, key=DEMO_CLASS_COUNTS.get) == "happiness"
    assert DEMO_CLASS_COUNTS["disgust"] < DEMO_CLASS_COUNTS["fear"] < DEMO_CLASS_COUNTS["neutral"]
    val = demo_split_counts("validation")
    for name, n in DEMO_CLASS_COUNTS.items():
        assert val[name] == pytest.approx(n / 4, abs=1)


@pytest.mark.parametrize("split", ["train", "validation"])
def test_split_counts_follow_scale(split: str) -> None:
    images, labels = make_demo_split(split, size=32, scale=0.05)
    expected = demo_split_counts(split, scale=0.05)
    assert len(images) == len(labels) == sum(expected.values())
    for name, n in expected.items():
        assert labels.count(CANONICAL_CLASSES.index(name)) == n
    assert min(expected.values()) >= 1


def test_tiny_scale_keeps_one_image_per_class() -> None:
    _, labels = make_demo_split("validation", size=32, scale=1e-6)
    assert sorted(labels) == list(range(len(CANONICAL_CLASSES)))


def test_smaller_scale_is_a_prefix_of_each_class() -> None:
    small, small_labels = make_demo_split("train", size=32, scale=0.01)
    big, big_labels = make_demo_split("train", size=32, scale=0.02)
    for label in range(len(CANONICAL_CLASSES)):
        first_small = small[small_labels.index(label)]
        first_big = big[big_labels.index(label)]
        assert np.array_equal(first_small, first_big)


def test_bad_split_and_scale() -> None:
    with pytest.raises(ValueError, match="split"):
        make_demo_split("test")
    with pytest.raises(ValueError, match="scale"):
        make_demo_split("train", scale=0)


@pytest.mark.parametrize(
    ("style", "names"), [("spanish", SPANISH_NAMES), ("english", ENGLISH_NAMES)]
)
def test_write_demo_dataset_layout(tmp_path, style, names) -> None:
    root = write_demo_dataset(tmp_path / "demo", size=32, seed=3, scale=0.01, folder_names=style)
    assert root == tmp_path / "demo"
    assert sorted(p.name for p in root.iterdir()) == ["train", "validation"]
    for split in ("train", "validation"):
        folders = sorted(p.name for p in (root / split).iterdir())
        assert folders == sorted(names.values())
        for name, n in demo_split_counts(split, scale=0.01).items():
            files = sorted((root / split / names[name]).glob("*.png"))
            assert [f.name for f in files] == sorted(f"{k}.png" for k in range(n))
    image = cv2.imread(str(root / "train" / names["happiness"] / "0.png"))
    assert image.shape == (32, 32, 3)
    expected, labels = make_demo_split("train", size=32, seed=3, scale=0.01)
    happiness = expected[labels.index(CANONICAL_CLASSES.index("happiness"))]
    assert np.array_equal(image[:, :, ::-1], happiness)  # PNG is lossless


def test_write_demo_dataset_rejects_unknown_style(tmp_path) -> None:
    with pytest.raises(ValueError, match="folder_names"):
        write_demo_dataset(tmp_path, scale=0.01, folder_names="french")  # type: ignore[arg-type]


def test_write_demo_new_images(tmp_path) -> None:
    paths = write_demo_new_images(tmp_path / "new", per_class=2, seed=5)
    expected = [f"{name}_{k}.png" for name in CANONICAL_CLASSES for k in (1, 2)]
    assert [p.name for p in paths] == expected
    shapes = set()
    for path in paths:
        image = cv2.imread(str(path))
        assert image is not None and image.dtype == np.uint8
        assert min(image.shape[:2]) >= 100
        shapes.add(image.shape[:2])
    assert len(shapes) > 1  # varying canvas sizes / aspect ratios
    again = write_demo_new_images(tmp_path / "again", per_class=2, seed=5)
    assert all(
        np.array_equal(cv2.imread(str(a)), cv2.imread(str(b)))
        for a, b in zip(paths, again, strict=True)
    )
    with pytest.raises(ValueError, match="per_class"):
        write_demo_new_images(tmp_path, per_class=0)


def test_demo_is_learnable_but_not_trivial() -> None:
    """A linear classifier on 16x16 pixels clearly beats chance (1/7) on held-out data."""
    from sklearn.discriminant_analysis import LinearDiscriminantAnalysis

    def features(images: list[np.ndarray]) -> np.ndarray:
        small = [cv2.resize(im[:, :, 0], (16, 16), interpolation=cv2.INTER_AREA) for im in images]
        return np.stack(small).reshape(len(images), -1).astype(np.float32) / 255.0

    train_images, train_labels = make_demo_split("train", size=48, seed=1, scale=0.35)
    val_images, val_labels = make_demo_split("validation", size=48, seed=1, scale=0.35)
    clf = LinearDiscriminantAnalysis(solver="lsqr", shrinkage="auto")
    clf.fit(features(train_images), train_labels)
    accuracy = clf.score(features(val_images), val_labels)
    assert 0.4 < accuracy < 0.95
