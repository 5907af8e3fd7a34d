"""fetch-data from a zip the test builds; the real gdown path is exercised offline."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest

from research.cli import fetch_data_main
from research.data.download import DownloadError, fetch_course_dataset
from tests.test_datasets import make_dataset


def make_zip(tmp_path: Path) -> Path:
    src = make_dataset(tmp_path / "src" / "dataset_emociones", per_class=2)
    zip_path = tmp_path / "dataset_emociones.zip"
    with zipfile.ZipFile(zip_path, "w") as zf:
        for f in src.rglob("*"):
            zf.write(f, f.relative_to(src.parent))
    return zip_path


def test_fetch_from_local_zip_is_idempotent(tmp_path, caplog):
    caplog.set_level("INFO")
    zip_path = make_zip(tmp_path)
    root, counts = fetch_course_dataset(tmp_path / "data", zip_path=zip_path)
    assert root == tmp_path / "data" / "dataset_emociones"
    assert counts["train"]["happiness"] == 2 and sum(counts["validation"].values()) == 14
    marker = root / "train" / "alegria" / "0.png"
    mtime = marker.stat().st_mtime_ns
    root2, _ = fetch_course_dataset(tmp_path / "data", zip_path=zip_path)
    assert root2 == root and marker.stat().st_mtime_ns == mtime
    assert "nothing to do" in caplog.text


def test_cli_prints_root(tmp_path, capsys):
    zip_path = make_zip(tmp_path)
    with pytest.raises(SystemExit) as exit_:
        fetch_data_main(["--data-dir", str(tmp_path / "data"), "--zip", str(zip_path)])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.strip().endswith("dataset_emociones")


def test_not_a_zip(tmp_path):
    bad = tmp_path / "bad.zip"
    bad.write_text("<html>quota exceeded</html>")
    with pytest.raises(DownloadError, match="not a zip"):
        fetch_course_dataset(tmp_path / "data", zip_path=bad)


def test_offline_download_gives_clear_message(tmp_path, monkeypatch):
    import gdown

    def offline(*args, **kwargs):
        raise ConnectionError("Name or service not known")

    monkeypatch.setattr(gdown, "download", offline)
    with pytest.raises(DownloadError, match="--zip PATH"):
        fetch_course_dataset(tmp_path / "data")
    assert not list((tmp_path / "data").glob("*.zip"))  # no half file left as if complete


def test_help_works(capsys):
    with pytest.raises(SystemExit) as exit_:
        fetch_data_main(["--help"])
    assert exit_.value.code == 0
    assert "gdown" in capsys.readouterr().out
