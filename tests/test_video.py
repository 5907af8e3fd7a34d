"""Video predictions: an annotated video and a per-frame CSV, read back frame by frame."""

from __future__ import annotations

import csv
import logging
from pathlib import Path

import cv2
import numpy as np
import pytest

from research.cli import predict_main
from research.data.classes import CANONICAL_CLASSES
from research.data.demo import render_demo_face
from research.faces.haar import HaarFaceCropper

WIDTH, HEIGHT = 224, 176
BLANK_FRAMES = (2, 7, 8, 11)  # the other 8 of 12 frames hold one demo face each


def _frames() -> list[np.ndarray]:
    """12 BGR frames: a demo face (drawn at 160 px) on a grey canvas, or a blank grey frame."""
    rng = np.random.default_rng(0)
    frames = []
    for i in range(12):
        canvas = np.full((HEIGHT, WIDTH, 3), 110, np.uint8)
        if i not in BLANK_FRAMES:
            face = render_demo_face(i % len(CANONICAL_CLASSES), rng, size=160)
            x0 = 8 + 6 * (i % 4)
            canvas[8:168, x0 : x0 + 160] = face
        frames.append(cv2.cvtColor(canvas, cv2.COLOR_RGB2BGR))
    return frames


@pytest.fixture(scope="module")
def video(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("video")
    for fourcc, name in (("mp4v", "clip.mp4"), ("MJPG", "clip.avi")):
        writer = cv2.VideoWriter(str(folder / name), cv2.VideoWriter_fourcc(*fourcc), 10.0, (WIDTH, HEIGHT))
        if writer.isOpened():
            for frame in _frames():
                writer.write(frame)
            writer.release()
            return folder / name
    pytest.skip("OpenCV can write neither mp4v nor MJPG here")


def _read_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def _run(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as e:
        predict_main(argv)
    assert e.value.code == 0


def test_annotated_video_and_csv_read_back(trained_run, video, tmp_path):
    out = tmp_path / "out"
    _run(["--run", str(trained_run), "--video", str(video), "--out", str(out)])
    annotated = out / "annotated.mp4"
    if not annotated.exists():
        annotated = out / "annotated.avi"  # the fallback codec
    cap = cv2.VideoCapture(str(annotated))
    frames = []
    ok, frame = cap.read()
    while ok:
        frames.append(frame)
        ok, frame = cap.read()
    cap.release()
    assert len(frames) == 12 and all(f.shape == (HEIGHT, WIDTH, 3) for f in frames)

    rows = _read_rows(out / "frames.csv")
    assert list(rows[0]) == ["frame", "time_s", "face", "x", "y", "w", "h", "winner", "score", *CANONICAL_CLASSES]
    by_frame: dict[int, list[dict[str, str]]] = {}
    for row in rows:
        by_frame.setdefault(int(row["frame"]), []).append(row)
    assert sorted(by_frame) == list(range(12))
    for i in BLANK_FRAMES:
        assert len(by_frame[i]) == 1 and by_frame[i][0]["winner"] == "no_face" and by_frame[i][0]["x"] == ""
    assert float(by_frame[5][0]["time_s"]) == pytest.approx(0.5)

    # Frames with a face the cascade finds have scored rows whose winner is the top score, and a
    # green box drawn into the video; blank frames have nothing drawn on them.
    expected = [i for i, f in enumerate(_frames()) if HaarFaceCropper().detect(cv2.cvtColor(f, cv2.COLOR_BGR2RGB))]
    assert len(expected) >= 4
    for i in expected:
        for row in by_frame[i]:
            scores = {c: float(row[c]) for c in CANONICAL_CLASSES}
            assert sum(scores.values()) == pytest.approx(1.0, abs=1e-4)
            assert row["winner"] == max(scores, key=scores.get) and float(row["score"]) == pytest.approx(scores[row["winner"]], abs=1e-6)
            assert int(row["w"]) > 20
    green = [int(((f[:, :, 1] > 180) & (f[:, :, 0] < 120) & (f[:, :, 2] < 120)).sum()) for f in frames]
    assert all(green[i] > 50 for i in expected)
    assert all(green[i] == 0 for i in BLANK_FRAMES)


def test_every_nth_frame(trained_run, video, tmp_path):
    out = tmp_path / "every"
    _run(["--run", str(trained_run), "--video", str(video), "--out", str(out), "--every", "3"])
    rows = _read_rows(out / "frames.csv")
    assert sorted({int(r["frame"]) for r in rows}) == [0, 3, 6, 9]
    cap = cv2.VideoCapture(str(next(out.glob("annotated.*"))))
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 12  # every frame is written, only every 3rd scored
    cap.release()


@pytest.mark.parametrize(
    ("source", "message"),
    [(["--video", "missing.mp4"], "missing.mp4 does not exist"), (["--camera", "7"], "camera 7 cannot be opened")],
)
def test_missing_video_or_camera_exits_2(trained_run, tmp_path, source, message, caplog, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with caplog.at_level(logging.ERROR), pytest.raises(SystemExit) as e:
        predict_main(["--run", str(trained_run), "--out", str(tmp_path / "o"), *source])
    assert e.value.code == 2 and message in caplog.text
    assert not (tmp_path / "o").exists()


def test_a_file_that_is_not_a_video_exits_2(trained_run, tmp_path, caplog):
    fake = tmp_path / "clip.mp4"
    fake.write_text("not a video")
    with caplog.at_level(logging.ERROR), pytest.raises(SystemExit) as e:
        predict_main(["--run", str(trained_run), "--video", str(fake), "--out", str(tmp_path / "o")])
    assert e.value.code == 2 and str(fake) in caplog.text
    assert not (tmp_path / "o").exists()
