"""Image cache modes: the choice from the estimate, the same pixels in every mode, bad files, the budget."""

from __future__ import annotations

import gc
import logging
import pickle
import sys
from pathlib import Path

import numpy as np
import pytest

from research.config import ConfigError, load_config
from research.data.augment import resolve_augment
from research.data.cache import (
    MmapImages,
    MmapView,
    choose_cache_mode,
    estimate_cache_bytes,
    normalize_cache_mode,
)
from research.data.datasets import load_datasets
from research.data.images import ImageDecodeError
from research.data.transforms import build_train_transform
from tests.test_datasets import make_bad_files_dataset, make_dataset

MiB = 2**20
REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    ("cache", "estimate", "budget", "free", "expected"),
    [
        ("auto", 10 * MiB, 100 * MiB, None, "memory"),
        ("auto", 100 * MiB, 100 * MiB, 0, "memory"),  # exactly the budget still fits
        ("auto", 200 * MiB, 100 * MiB, 10_000 * MiB, "mmap"),
        ("auto", 200 * MiB, 100 * MiB, 210 * MiB, "stream"),  # disk lacks the 10 % headroom
        ("memory", 200 * MiB, 100 * MiB, None, "memory"),  # asked for: honoured, with a warning
        ("stream", 1, 100 * MiB, None, "stream"),
        ("mmap", 1, 100 * MiB, 10 * MiB, "mmap"),
        (True, 1, 1, None, "memory"),
        ("false", 1, 1, None, "stream"),
    ],
)
def test_mode_chosen_from_the_estimate(cache, estimate, budget, free, expected):
    mode, _ = choose_cache_mode(cache, estimate_bytes=estimate, budget_bytes=budget, disk_free_bytes=free)
    assert mode == expected


def test_mmap_without_disk_room_and_unknown_mode_are_errors():
    with pytest.raises(OSError, match="data.cache_dir"):
        choose_cache_mode("mmap", estimate_bytes=100 * MiB, budget_bytes=1, disk_free_bytes=MiB)
    with pytest.raises(ValueError, match="auto, memory, mmap, stream"):
        normalize_cache_mode("disk")


def test_estimate_is_one_square_slot_per_image():
    assert estimate_cache_bytes(1000, 64) >= 1000 * 64 * 64 * 3


def test_load_datasets_picks_and_logs_mmap_over_budget(tmp_path, caplog):
    root = make_dataset(tmp_path / "d", per_class=2, size=(40, 30))
    caplog.set_level(logging.INFO, logger="research.data.cache")
    # 28 images x 256^2 x 3 bytes ~ 5.3 MiB > 1 MiB budget; the images keep their 40x30 in the slots
    bundle = load_datasets(root, cache="auto", keep_size=256, cache_budget_mb=1, cache_dir=tmp_path / "c")
    assert isinstance(bundle.train.images, MmapView)
    assert "image cache: mmap" in caplog.text and "28 images" in caplog.text and "budget 1 MiB" in caplog.text
    assert load_datasets(root, cache="auto", keep_size=256, cache_budget_mb=100).train.images.__class__ is list


def _modes(root: Path, tmp_path: Path, **kwargs) -> dict:
    return {m: load_datasets(root, cache=m, cache_dir=tmp_path / "c", **kwargs) for m in ("memory", "mmap", "stream")}


def test_every_mode_gives_the_same_pixels_and_tensors(tmp_path):
    root = make_dataset(tmp_path / "d", per_class=2, size=(50, 37))  # non-square, shrunk to 32 x 24
    bundles = _modes(root, tmp_path, keep_size=32)
    reference = bundles["memory"].train
    for mode, bundle in bundles.items():
        assert bundle.train.names == reference.names, mode
        for i in range(len(reference)):
            np.testing.assert_array_equal(bundle.train.load(i), reference.load(i), err_msg=mode)
    # The train transform is random: the same seed must draw the same augmentation from the same pixels.
    for index in (0, 5, 13):
        tensors = []
        for bundle in bundles.values():
            bundle.train.transform = build_train_transform(
                32, channels=1, mean=(0.5,), std=(0.5,), augment=resolve_augment("strong"), seed=7
            )
            tensors.append(bundle.train[index][0])
        for t in tensors[1:]:
            assert t.shape == tensors[0].shape and bool((t == tensors[0]).all())


@pytest.mark.parametrize("mode", ["memory", "mmap", "stream"])
def test_bad_file_is_reported_in_every_mode(tmp_path, mode, caplog):
    bad_files_dataset = make_bad_files_dataset(tmp_path / "d")
    with pytest.raises(ImageDecodeError) as err:
        load_datasets(bad_files_dataset, cache=mode, keep_size=32, cache_dir=tmp_path / "c")
    assert "trunc.jpg" in str(err.value) and "text.jpg" in str(err.value)
    bundle = load_datasets(bad_files_dataset, cache=mode, keep_size=32, bad_files="skip", cache_dir=tmp_path / "c")
    assert {p.name for p, _ in bundle.skipped} == {"trunc.jpg", "text.jpg", "notes.txt"}
    assert "trunc.jpg" in caplog.text
    assert len(bundle.train) == 14 and "alegria/0.png" in bundle.train.names
    assert bundle.train.load(bundle.train.names.index("alegria/0.png")).shape == (20, 24, 3)


def test_mmap_file_pickles_by_path_and_is_removed_when_freed(tmp_path):
    root = make_dataset(tmp_path / "d", per_class=2, size=(20, 24))
    bundle = load_datasets(root, cache="mmap", keep_size=64, cache_dir=tmp_path / "c")
    store: MmapImages = bundle.train.images.store
    folder = Path(store.folder)
    assert folder.parent == tmp_path / "c" and Path(store.path).stat().st_size == len(store) * 64 * 64 * 3
    payload = pickle.dumps(bundle.train)  # what a spawned DataLoader worker receives
    assert len(payload) < 64 * 64 * 3
    np.testing.assert_array_equal(pickle.loads(payload).load(3), bundle.train.load(3))
    del bundle, store, payload
    gc.collect()
    assert not folder.exists()


def test_config_cache_choices_and_old_booleans():
    assert load_config(None, ["data.cache=true"]).data.cache == "memory"
    assert load_config(None, ["data.cache=False"]).data.cache == "stream"
    assert load_config(None, ["data.cache=mmap", "data.cache_budget_mb=512"]).data.cache_budget_mb == 512
    with pytest.raises(ConfigError, match="data.cache='disk' is not one of auto, memory, mmap, stream"):
        load_config(None, ["data.cache=disk"])
    with pytest.raises(ConfigError, match="data.cache_budget_mb"):
        load_config(None, ["data.cache_budget_mb=-1"])


def test_old_boolean_in_a_yaml_file(tmp_path):
    (tmp_path / "old.yaml").write_text("data:\n  cache: false\n")
    assert load_config(tmp_path / "old.yaml").data.cache == "stream"


@pytest.mark.slow
def test_mmap_and_stream_stay_under_the_budget(tmp_path):
    """The benchmark on 4,000 PNGs of 34 px with a 4 MiB budget: the memory cache needs ~14 MiB.

    Every mode pays the same for the process itself (torch, the file list, the DataLoader),
    so stream mode, which keeps no images, is the floor: mmap must stay within the budget
    above it, and the memory cache must exceed the budget above it (or the check proves nothing).
    Memory is the peak anonymous memory: pages of the mapped file are the kernel's to drop.
    """
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        from cache_modes import run_modes
    finally:
        sys.path.remove(str(REPO / "benchmarks"))
    budget = 4
    report = run_modes(tmp_path / "bench", n=4000, size=34, budget_mb=budget, rounds=1)
    peak = {r["mode"]: r["anon_peak_mib"] for r in report["results"]}
    stored = {r["mode"]: r["stored_as"] for r in report["results"]}
    assert stored == {"memory": "list", "mmap": "MmapView", "stream": "files"}
    assert all(r["log"] and "budget 4 MiB" in r["log"][0] for r in report["results"])
    assert peak["mmap"] - peak["stream"] < budget, peak
    assert peak["memory"] - peak["stream"] > budget, peak
