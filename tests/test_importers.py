"""prepare-data importers: miniature sources in each real format, written here, imported and read back."""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from research.cli import prepare_data_main
from research.data.classes import CANONICAL_CLASSES, UnknownClassError
from research.data.datasets import load_datasets
from research.data.importers import (
    AFFECTNET_IDS,
    FER2013_EMOTIONS,
    FERPLUS_VOTES,
    JAFFE_CODES,
    RAFDB_LABELS,
    DatasetImportError,
    ferplus_winner,
    import_dataset,
    jaffe_label,
)

USAGES = ("Training", "PublicTest", "PrivateTest")


# --- sources in the real formats --------------------------------------------------------------
def face(seed: int, size=(48, 48)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size, dtype=np.uint8)


def write_fer2013(path: Path, rows: list[tuple[str, str, str]]) -> Path:
    """``rows``: (emotion, pixels, Usage) as the strings of the CSV."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["emotion", "pixels", "Usage"])
        writer.writerows(rows)
    return path


def pixels_text(arr: np.ndarray) -> str:
    return " ".join(str(int(v)) for v in arr.ravel())


def fer_rows(per_usage=USAGES) -> list[tuple[str, str, str]]:
    """One row per emotion id 0..6 and Usage; row i has pixels face(i)."""
    rows = []
    for usage in per_usage:
        for emotion in range(7):
            rows.append((str(emotion), pixels_text(face(len(rows))), usage))
    return rows


def write_image(path: Path, seed: int, size=(24, 20)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(face(seed, size)).save(path)
    return path


def write_rafdb(root: Path) -> Path:
    """RAF-DB basic: 1 train and 1 test image per label 1..7."""
    lines = []
    for split, offset in (("train", 0), ("test", 100)):
        for label in RAFDB_LABELS:
            name = f"{split}_{offset + label:05d}"
            lines.append(f"{name}.jpg {label}")
            write_image(root / "Image" / "aligned" / f"{name}_aligned.jpg", seed=offset + label)
    (root / "EmoLabel").mkdir(parents=True)
    (root / "EmoLabel" / "list_patition_label.txt").write_text("\n".join(lines) + "\n")
    return root


def write_affectnet(root: Path, *, names: bool = False, val: str = "val") -> Path:
    """AffectNet class folders 0..7 (or English names), 2 train and 1 val image each."""
    for split, n in (("train", 2), (val, 1)):
        for class_id, label in enumerate(AFFECTNET_IDS):
            folder = root / split / (label if names else str(class_id))
            for k in range(n):
                write_image(folder / f"image{class_id}{k}.png", seed=class_id * 10 + k + (50 if split != "train" else 0))
    return root


def write_jaffe(root: Path, subjects=("KA", "KL", "KM", "KR", "MK")) -> Path:
    """JAFFE-style flat folder: SUBJECT.CODE1.N.tiff, one per subject and code (5 per class)."""
    n = 0
    for subject in subjects:
        for code in JAFFE_CODES:
            n += 1
            write_image(root / f"{subject}.{code}1.{n}.tiff", seed=n)
    return root


# --- checks -------------------------------------------------------------------------------
def files_on_disk(dest: Path) -> set[str]:
    return {p.relative_to(dest).as_posix() for p in dest.rglob("*") if p.is_file() and p.name != "manifest.json"}


def check_manifest(dest: Path) -> dict:
    """The manifest lists exactly the files on disk, with their sha256, and counts them right."""
    manifest = json.loads((dest / "manifest.json").read_text())
    assert manifest["complete"] is True
    assert set(manifest["files"]) == files_on_disk(dest)
    for rel, sha in manifest["files"].items():
        assert hashlib.sha256((dest / rel).read_bytes()).hexdigest() == sha, rel
    for split, per_class in manifest["counts"].items():
        for label, n in per_class.items():
            assert len(list((dest / split / label).glob("*"))) == n, (split, label)
    assert sum(sum(c.values()) for c in manifest["counts"].values()) == manifest["total"] == len(manifest["files"])
    assert manifest["dropped"]["total"] == len(manifest["dropped"]["items"]) == sum(manifest["dropped"]["by_reason"].values())
    return manifest


def mtimes(dest: Path) -> dict[str, int]:
    return {str(p): p.stat().st_mtime_ns for p in dest.rglob("*") if p.is_file()}


def assert_idempotent(fmt: str, src: Path, dest: Path, caplog, **options) -> None:
    before = mtimes(dest)
    caplog.clear()
    result = import_dataset(fmt, src, dest, **options)
    assert result.up_to_date and result.written == 0 and result.removed == 0
    assert mtimes(dest) == before
    assert "nothing to do" in caplog.text


# --- fer2013 ------------------------------------------------------------------------------
def test_fer2013_import_layout_manifest_load_and_rerun(tmp_path, caplog):
    caplog.set_level("INFO")
    rows = fer_rows()
    src = write_fer2013(tmp_path / "src" / "fer2013.csv", rows)
    dest = tmp_path / "fer"
    result = import_dataset("fer2013", src.parent, dest)  # the folder holding fer2013.csv works too

    assert result.written == 21 and not result.up_to_date
    manifest = check_manifest(dest)
    assert manifest["format"] == "fer2013" and manifest["source"] == str(src.resolve())
    assert set(manifest["counts"]) == {"train", "validation", "test"}
    assert all(manifest["counts"][s] == {c: 1 for c in CANONICAL_CLASSES} for s in manifest["counts"])
    assert manifest["dropped"]["total"] == 0
    # row 4 of the Training block is emotion 4 = Sad; its PNG holds exactly that row's pixels
    png = dest / "train" / "sadness" / "fer0000004.png"
    assert FER2013_EMOTIONS[4] == "sadness" and np.array_equal(np.asarray(Image.open(png)), face(4))
    assert (dest / "validation" / "neutral" / "fer0000013.png").is_file()  # PublicTest, emotion 6
    assert "class" in caplog.text and "total" in caplog.text  # the count table

    bundle = load_datasets(str(dest))
    assert len(bundle.train) == 7 and len(bundle.val) == 7
    assert bundle.class_counts["validation"] == {c: 1 for c in CANONICAL_CLASSES}

    assert_idempotent("fer2013", src, dest, caplog)


def test_fer2013_bad_pixel_count_names_the_line(tmp_path):
    rows = fer_rows()
    rows[2] = (rows[2][0], rows[2][1].rsplit(" ", 1)[0], rows[2][2])  # 2303 values, on line 4
    src = write_fer2013(tmp_path / "fer2013.csv", rows)
    with pytest.raises(DatasetImportError, match=r"fer2013\.csv line 4: 2303 pixel values, expected 2304.*--bad-rows skip"):
        import_dataset("fer2013", src, tmp_path / "out")
    assert not (tmp_path / "out").exists()  # planned in full first: nothing written

    result = import_dataset("fer2013", src, tmp_path / "out", bad_rows="skip")
    dropped = check_manifest(tmp_path / "out")["dropped"]
    assert dropped["by_reason"] == {"bad row: pixels": 1} and "line 4" in dropped["items"][0]["origin"]
    assert result.counts["train"]["fear"] == 0 and result.manifest["total"] == 20


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [(0, "7", "emotion '7' is not an id 0..6"), (2, "Validation", "Usage 'Validation' is not Training"), (1, "1 2 x", "3 pixel values")],
)
def test_fer2013_bad_rows(tmp_path, field, value, message):
    rows = fer_rows()
    row = list(rows[5])
    row[field] = value
    rows[5] = tuple(row)
    src = write_fer2013(tmp_path / "fer2013.csv", rows)
    with pytest.raises(DatasetImportError, match=f"line 7: {message}"):
        import_dataset("fer2013", src, tmp_path / "out")


def test_fer2013_missing_column(tmp_path):
    src = tmp_path / "train.csv"
    src.write_text("emotion,pixels\n0,1 2 3\n")
    with pytest.raises(DatasetImportError, match="line 1: missing column.*Usage"):
        import_dataset("fer2013", src, tmp_path / "out")


# --- ferplus ------------------------------------------------------------------------------
def write_ferplus(root: Path) -> tuple[Path, dict[str, int]]:
    """fer2013.csv + fer2013new.csv: a clear winner per class in Training and PublicTest, then
    rows that must be dropped. Returns the folder and the expected drops by reason."""
    fer, labels = [], []

    def add(usage: str, votes: dict[str, int], name: str | None = None) -> None:
        i = len(fer)
        fer.append(("0", pixels_text(face(i)), usage))
        labels.append([usage, f"fer{i:07d}.png" if name is None else name, *(votes.get(c, 0) for c in FERPLUS_VOTES)])

    for usage in ("Training", "PublicTest"):
        for label in CANONICAL_CLASSES:
            add(usage, {label: 6, "neutral" if label != "neutral" else "sadness": 4})
    add("Training", {"happiness": 5, "surprise": 5})
    add("Training", {"unknown": 7, "fear": 3})
    add("Training", {"nf": 10})
    add("PrivateTest", {"contempt": 8, "neutral": 2})
    add("Training", {"happiness": 10}, name="")
    write_fer2013(root / "fer2013.csv", fer)
    with open(root / "fer2013new.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["Usage", "Image name", "neutral", "happiness", "surprise", "sadness", "anger", "disgust",
                         "fear", "contempt", "unknown", "NF"])
        writer.writerows(labels)
    return root, {"tie": 1, "unknown": 1, "not a face (NF)": 1, "contempt": 1, "no image name": 1}


def test_ferplus_majority_vote_drops_counted(tmp_path, caplog):
    caplog.set_level("INFO")
    src, expected_drops = write_ferplus(tmp_path / "ferplus")
    dest = tmp_path / "out"
    result = import_dataset("ferplus", src, dest)
    manifest = check_manifest(dest)
    assert manifest["dropped"]["by_reason"] == dict(sorted(expected_drops.items()))
    assert result.counts == {s: {c: 1 for c in CANONICAL_CLASSES} for s in ("train", "validation")}
    # row i of the labels is row i of the pixels: PublicTest's first row (index 7) is anger
    assert np.array_equal(np.asarray(Image.open(dest / "validation" / "anger" / "fer0000007.png")), face(7))
    assert len(load_datasets(str(dest)).train) == 7
    assert_idempotent("ferplus", src, dest, caplog)

    kept = import_dataset("ferplus", src, tmp_path / "kept", contempt="keep")
    assert kept.counts["test"]["contempt"] == 1 and (tmp_path / "kept" / "test" / "contempt" / "fer0000017.png").is_file()
    assert "contempt" not in kept.manifest["dropped"]["by_reason"]


def test_ferplus_labels_option_and_misaligned_files(tmp_path):
    src, _ = write_ferplus(tmp_path / "ferplus")
    labels = tmp_path / "elsewhere" / "fer2013new.csv"
    labels.parent.mkdir()
    (src / "fer2013new.csv").rename(labels)
    with pytest.raises(DatasetImportError, match="no fer2013new.csv"):
        import_dataset("ferplus", src, tmp_path / "a")
    assert import_dataset("ferplus", src / "fer2013.csv", tmp_path / "a", labels=labels).manifest["total"] == 14

    lines = labels.read_text().splitlines()
    labels.write_text("\n".join(lines[:-2]) + "\n")  # one label row short
    with pytest.raises(DatasetImportError, match="same rows in the same order"):
        import_dataset("ferplus", src, tmp_path / "b", labels=labels)


def test_ferplus_winner():
    votes = dict.fromkeys(FERPLUS_VOTES, 0)
    assert ferplus_winner({**votes, "fear": 4, "anger": 3}) == ("fear", "")
    assert ferplus_winner({**votes, "fear": 4, "anger": 4}) == (None, "tie")
    assert ferplus_winner(votes) == (None, "no votes")


# --- rafdb --------------------------------------------------------------------------------
def test_rafdb_import(tmp_path, caplog):
    caplog.set_level("INFO")
    src = write_rafdb(tmp_path / "basic")
    dest = tmp_path / "out"
    import_dataset("rafdb", src, dest)
    manifest = check_manifest(dest)
    assert manifest["counts"] == {s: {c: 1 for c in CANONICAL_CLASSES} for s in ("train", "validation")}
    assert "no separate validation" in manifest["splits"]["validation"] and manifest["notes"]
    # label 1 is Surprise; the file is copied byte for byte
    copied = dest / "train" / "surprise" / "train_00001_aligned.jpg"
    assert copied.read_bytes() == (src / "Image" / "aligned" / "train_00001_aligned.jpg").read_bytes()
    assert (dest / "validation" / "neutral" / "test_00107_aligned.jpg").is_file()
    assert len(load_datasets(str(dest)).val) == 7
    assert_idempotent("rafdb", src, dest, caplog)


def test_rafdb_missing_image_named(tmp_path):
    src = write_rafdb(tmp_path / "basic")
    missing = src / "Image" / "aligned" / "train_00003_aligned.jpg"
    missing.unlink()
    with pytest.raises(DatasetImportError, match=r"train_00003_aligned\.jpg \(listed on .*line 3\): file not found"):
        import_dataset("rafdb", src, tmp_path / "out")
    result = import_dataset("rafdb", src, tmp_path / "out", bad_rows="skip")
    assert result.manifest["dropped"]["by_reason"] == {"missing image": 1}
    assert result.counts["train"]["disgust"] == 0


def test_rafdb_bad_label_line(tmp_path):
    src = write_rafdb(tmp_path / "basic")
    label_file = src / "EmoLabel" / "list_patition_label.txt"
    label_file.write_text(label_file.read_text().replace("train_00002.jpg 2", "train_00002.jpg 8"))
    with pytest.raises(DatasetImportError, match="list_patition_label.txt line 2: 'train_00002.jpg 8' is not"):
        import_dataset("rafdb", src, tmp_path / "out")


# --- affectnet ----------------------------------------------------------------------------
@pytest.mark.parametrize("names", [False, True], ids=["ids", "english-names"])
def test_affectnet_contempt_policies(tmp_path, names, caplog):
    caplog.set_level("INFO")
    src = write_affectnet(tmp_path / "affectnet", names=names)
    dest = tmp_path / "drop"
    result = import_dataset("affectnet", src, dest)
    manifest = check_manifest(dest)
    assert result.counts["train"] == {c: 2 for c in CANONICAL_CLASSES}
    assert manifest["dropped"]["by_reason"] == {"contempt": 3}
    bundle = load_datasets(str(dest))
    assert len(bundle.train) == 14 and len(bundle.val) == 7
    assert_idempotent("affectnet", src, dest, caplog)

    kept = import_dataset("affectnet", src, tmp_path / "keep", contempt="keep")
    assert kept.counts["train"]["contempt"] == 2 and kept.counts["validation"]["contempt"] == 1
    assert "training data layer stops on it" in caplog.text
    with pytest.raises(UnknownClassError, match="contempt"):  # as the warning says
        load_datasets(str(tmp_path / "keep"))
    mapped = import_dataset("affectnet", src, tmp_path / "map", contempt="map:Disgusted")
    assert mapped.counts["train"]["disgust"] == 4 and mapped.manifest["dropped"]["total"] == 0
    check_manifest(tmp_path / "map")


def test_affectnet_unknown_class_id_and_bad_contempt(tmp_path):
    src = write_affectnet(tmp_path / "affectnet", val="validation")
    write_image(src / "train" / "9" / "x.png", seed=1)
    with pytest.raises(DatasetImportError, match=r"train/9: '9' is not a class id or class name of AffectNet: expected an id \(0 neutral"):
        import_dataset("affectnet", src, tmp_path / "out")
    (src / "train" / "9" / "x.png").unlink()
    (src / "train" / "9").rmdir()
    with pytest.raises(DatasetImportError, match="map:CLASS with one of"):
        import_dataset("affectnet", src, tmp_path / "out", contempt="map:smug")
    assert not (tmp_path / "out").exists()


# --- filenames (JAFFE, CK+) ----------------------------------------------------------------
def test_filenames_jaffe_stratified_seeded_split(tmp_path, caplog):
    caplog.set_level("INFO")
    assert jaffe_label("KA.AN1.39.tiff") == "anger" and jaffe_label("NA.SU2.80.tiff") == "surprise"
    src = write_jaffe(tmp_path / "jaffe")
    (src / "README").write_text("The Japanese Female Facial Expression database")
    dest = tmp_path / "out"
    result = import_dataset("filenames", src, dest)
    manifest = check_manifest(dest)
    assert result.counts == {"train": {c: 4 for c in CANONICAL_CLASSES}, "validation": {c: 1 for c in CANONICAL_CLASSES}}
    assert manifest["options"] == {"bad_rows": "error", "contempt": "drop", "val_fraction": 0.2, "seed": 0}
    assert "seed=0" in manifest["splits"]["validation"]
    assert manifest["dropped"]["by_reason"] == {"not an image file": 1}
    assert (dest / "train" / "anger").is_dir() and all(p.suffix == ".tiff" for p in (dest / "train" / "anger").iterdir())
    assert len(load_datasets(str(dest)).val) == 7
    assert_idempotent("filenames", src, dest, caplog)

    # the same seed gives the same split; another seed moves files, and stale copies are removed
    again = import_dataset("filenames", src, tmp_path / "again")
    assert again.manifest["files"] == manifest["files"]
    other = import_dataset("filenames", src, dest, seed=1, val_fraction=0.4)
    assert other.removed > 0 and other.counts["validation"] == {c: 2 for c in CANONICAL_CLASSES}
    check_manifest(dest)


def test_filenames_ckplus_id_folders(tmp_path):
    src = tmp_path / "ckplus"
    for class_id in range(8):
        for k in range(3):
            write_image(src / str(class_id) / f"S{class_id:03d}_00{k}_0000001{k}.png", seed=class_id * 3 + k)
    result = import_dataset("filenames", src, tmp_path / "out", val_fraction=0.34, seed=3)
    check_manifest(tmp_path / "out")
    assert result.counts["train"] == {c: 2 for c in CANONICAL_CLASSES}  # id 2 is contempt: dropped
    assert result.manifest["dropped"]["by_reason"] == {"contempt": 3}
    assert (tmp_path / "out" / "train" / "happiness").is_dir()  # CK+ 5 = happy


def test_filenames_unlabelled_name(tmp_path):
    src = write_jaffe(tmp_path / "jaffe")
    write_image(src / "IMG_0001.png", seed=9)
    with pytest.raises(DatasetImportError, match="IMG_0001.png: no emotion in the file name.*KA.AN1.39.tiff"):
        import_dataset("filenames", src, tmp_path / "out")
    result = import_dataset("filenames", src, tmp_path / "out", bad_rows="skip")
    assert result.manifest["dropped"]["by_reason"] == {"no label in the file name": 1}


# --- DEST safety ------------------------------------------------------------------------------
def test_dest_of_another_source_refused_unless_force(tmp_path):
    fer = write_fer2013(tmp_path / "fer2013.csv", fer_rows())
    raf = write_rafdb(tmp_path / "basic")
    dest = tmp_path / "out"
    import_dataset("fer2013", fer, dest)
    with pytest.raises(DatasetImportError, match="holds a fer2013 import of .*--force"):
        import_dataset("rafdb", raf, dest)
    result = import_dataset("rafdb", raf, dest, force=True)
    assert result.removed == 21 and not (dest / "test").exists()
    assert check_manifest(dest)["format"] == "rafdb"


def test_foreign_dest_refused_and_damaged_files_repaired(tmp_path, caplog):
    caplog.set_level("INFO")
    src = write_fer2013(tmp_path / "fer2013.csv", fer_rows())
    foreign = tmp_path / "foreign"
    write_image(foreign / "train" / "happy" / "mine.png", seed=0)
    with pytest.raises(DatasetImportError, match="not empty and has no manifest.json"):
        import_dataset("fer2013", src, foreign)

    dest = tmp_path / "out"
    import_dataset("fer2013", src, dest)
    (dest / "train" / "anger" / "fer0000000.png").unlink()
    (dest / "test" / "fear" / "fer0000016.png").write_bytes(b"truncated")
    result = import_dataset("fer2013", src, dest)
    assert (result.written, result.unchanged) == (2, 19)
    check_manifest(dest)


def test_killed_import_is_rerun_cleanly(tmp_path, monkeypatch):
    from research.data.importers import writer

    src = write_fer2013(tmp_path / "fer2013.csv", fer_rows())
    dest = tmp_path / "out"
    encode, calls = writer.encode, []

    def killed_after_five(f):
        calls.append(f)
        if len(calls) > 5:
            raise KeyboardInterrupt
        return encode(f)

    monkeypatch.setattr(writer, "encode", killed_after_five)
    with pytest.raises(KeyboardInterrupt):
        import_dataset("fer2013", src, dest)
    partial = json.loads((dest / "manifest.json").read_text())
    assert partial["complete"] is False and len(partial["files"]) == 21 and len(files_on_disk(dest)) == 5
    assert not list(dest.rglob("*.part"))
    with pytest.raises(DatasetImportError, match="holds a fer2013 import"):  # still claimed by that import
        import_dataset("rafdb", write_rafdb(tmp_path / "basic"), dest)

    monkeypatch.setattr(writer, "encode", encode)
    result = import_dataset("fer2013", src, dest)
    assert (result.written, result.unchanged) == (16, 5)
    check_manifest(dest)


# --- CLI ------------------------------------------------------------------------------------
def test_cli_exit_codes(tmp_path, capsys, caplog):
    rows = fer_rows()
    src = write_fer2013(tmp_path / "fer2013.csv", rows)
    with pytest.raises(SystemExit) as exit_:
        prepare_data_main(["fer2013", str(src), str(tmp_path / "out"), "--seed", "3"])
    assert exit_.value.code == 0
    assert "--seed is not used by the fer2013 importer; ignored" in caplog.text
    assert capsys.readouterr().out.strip() == str((tmp_path / "out").resolve())

    rows[0] = ("9", rows[0][1], rows[0][2])
    bad = write_fer2013(tmp_path / "bad" / "fer2013.csv", rows)
    caplog.clear()
    with pytest.raises(SystemExit) as exit_:
        prepare_data_main(["fer2013", str(bad), str(tmp_path / "out2")])
    assert exit_.value.code == 2
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and "fer2013.csv line 2: emotion '9' is not an id 0..6" in errors[0]


def test_registered_as_command():
    import tomllib

    from research.__main__ import COMMANDS

    pyproject = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())
    assert pyproject["project"]["scripts"]["prepare-data"] == "research.cli:prepare_data_main"
    assert COMMANDS["prepare-data"][0] is prepare_data_main
