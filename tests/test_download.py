"""fetch-data from a zip the test builds; the real gdown path is exercised offline."""

from __future__ import annotations

import hashlib
import logging
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


def make_zip_without_validation(tmp_path: Path) -> Path:
    src = make_dataset(tmp_path / "src-bad" / "dataset_emociones", per_class=2)
    zip_path = tmp_path / "no-validation.zip"
    with zipfile.ZipFile(zip_path, "w") as zf:
        for f in src.rglob("*"):
            if "validation" not in f.relative_to(src).parts:
                zf.write(f, f.relative_to(src.parent))
    return zip_path


def fetch(argv: list[str]) -> int:
    with pytest.raises(SystemExit) as exit_:
        fetch_data_main(argv)
    return exit_.value.code


@pytest.mark.parametrize("force", [[], ["--force"]])
def test_a_zip_without_validation_unpacks_nothing_and_the_right_zip_then_works(force, tmp_path, caplog, capsys):
    data = tmp_path / "data"
    assert fetch(["--data-dir", str(data), "--zip", str(make_zip_without_validation(tmp_path))]) == 2
    assert "validation" in caplog.text and "nothing was unpacked" in caplog.text
    assert not (data / "dataset_emociones").exists() and not [p for p in data.iterdir() if p.name.startswith(".")]
    assert fetch(["--data-dir", str(data), "--zip", str(make_zip(tmp_path)), *force]) == 0
    assert capsys.readouterr().out.strip() == str(data / "dataset_emociones")
    assert len(list((data / "dataset_emociones" / "validation").rglob("*.png"))) == 14


def test_a_broken_tree_from_before_is_replaced_by_the_right_zip(tmp_path):
    data = tmp_path / "data"
    (data / "dataset_emociones" / "train" / "alegria").mkdir(parents=True)  # what the old fetch-data left behind
    root, counts = fetch_course_dataset(data, zip_path=make_zip(tmp_path))
    assert root == data / "dataset_emociones" and sum(counts["validation"].values()) == 14


def test_sha256_is_checked_when_given(tmp_path, caplog):
    zip_path = make_zip(tmp_path)
    digest = hashlib.sha256(zip_path.read_bytes()).hexdigest()
    data = tmp_path / "data"
    assert fetch(["--data-dir", str(data), "--zip", str(zip_path), "--sha256", "0" * 64]) == 2
    assert f"{zip_path} has sha256 {digest}, expected {'0' * 64}" in caplog.text and not data.joinpath("dataset_emociones").exists()
    assert zip_path.exists()  # the user's own zip is never deleted
    caplog.clear()
    caplog.set_level("INFO")
    assert fetch(["--data-dir", str(data), "--zip", str(zip_path), "--sha256", digest.upper()]) == 0
    assert f"sha256 {digest} (as expected)" in caplog.text


def fake_gdown(monkeypatch, zip_path: Path, *, fail: Exception | None = None) -> list[dict]:
    """gdown.download replaced: records its arguments, writes the zip (or half of it, then fails)."""
    import gdown

    calls = []

    def download(**kwargs):
        calls.append(kwargs)
        data = zip_path.read_bytes()
        if fail is not None:
            Path(kwargs["output"] + ".part-1").write_bytes(data[: len(data) // 2])  # gdown keeps its partial file
            raise fail
        Path(kwargs["output"]).write_bytes(data)
        return kwargs["output"]

    monkeypatch.setattr(gdown, "download", download)
    return calls


def test_download_uses_timeout_retries_resume_and_cookies(tmp_path, monkeypatch):
    cookies = tmp_path / "cookies.txt"
    cookies.write_text("# Netscape HTTP Cookie File\n")
    calls = fake_gdown(monkeypatch, make_zip(tmp_path))
    data = tmp_path / "data"
    argv = ["--data-dir", str(data), "--timeout", "7", "--retries", "5", "--cookies-file", str(cookies)]
    assert fetch(argv) == 0
    [call] = calls
    assert call["timeout"] == 7 and call["retries"] == 5 and call["resume"] is True and call["cookies_file"] == str(cookies)
    assert (data / "dataset_emociones" / "train").is_dir()


def test_a_damaged_download_is_removed(tmp_path, monkeypatch, caplog):
    fake_gdown(monkeypatch, make_zip(tmp_path))
    data = tmp_path / "data"
    assert fetch(["--data-dir", str(data), "--sha256", "f" * 64]) == 2
    assert "has sha256" in caplog.text and not list(data.glob("*.zip")) and not (data / "dataset_emociones").exists()


def test_drive_too_many_users_points_to_cookies(tmp_path, monkeypatch, caplog):
    import gdown

    fake_gdown(monkeypatch, make_zip(tmp_path), fail=gdown.exceptions.FileURLRetrievalError("Too many users have viewed or downloaded this file recently"))
    assert fetch(["--data-dir", str(tmp_path / "data")]) == 2
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "--cookies-file" in errors[0] and "--zip PATH" in errors[0]
    assert not (tmp_path / "data" / "dataset_emociones").exists()


def test_an_interrupted_download_says_it_resumes(tmp_path, monkeypatch, caplog):
    fake_gdown(monkeypatch, make_zip(tmp_path), fail=TimeoutError("read timed out"))
    assert fetch(["--data-dir", str(tmp_path / "data")]) == 2
    assert "Run the same command again to resume" in caplog.text
    assert not (tmp_path / "data" / "dataset_emociones.zip").exists() and not (tmp_path / "data" / "dataset_emociones").exists()


def test_a_missing_cookies_file(tmp_path, caplog):
    assert fetch(["--data-dir", str(tmp_path / "data"), "--cookies-file", str(tmp_path / "nope.txt")]) == 2
    assert f"--cookies-file {tmp_path / 'nope.txt'} not found" in caplog.text
