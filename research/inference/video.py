"""Video and camera predictions: every face of every (Nth) frame, annotated into a new video.

Each scored frame goes through the Haar cascade (all faces, :meth:`HaarFaceCropper.crop_all`),
each face crop through the run's eval transform and :func:`research.inference.loaded.predict_arrays`
(the one forward path), and the frame is written to ``annotated.mp4`` (``mp4v``; Motion-JPEG
``annotated.avi`` when OpenCV has no MPEG-4 encoder) with a box, the winner and its score, and a
small bar per class beside each face. ``frames.csv`` has one row per face of each scored frame,
and one row with winner ``no_face`` for a scored frame without a face. With ``every > 1`` the
frames in between are written with the last scored frame's annotations. OpenCV here is the
headless build: nothing is shown on screen, everything goes to files.
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from research.errors import UserError
from research.faces.factory import haar_cropper
from research.faces.geometry import Box
from research.inference.loaded import LoadedRun, load_onnx, load_run, predict_arrays

log = logging.getLogger(__name__)

NO_FACE = "no_face"
CODECS = (("mp4v", ".mp4"), ("MJPG", ".avi"))
DEFAULT_FPS = 25.0  # when the source does not say (cameras, some files)
BOX_COLOR = (60, 220, 60)  # BGR
BAR_COLOR = (60, 180, 255)
WINNER_COLOR = (60, 220, 60)


class VideoSourceError(UserError, FileNotFoundError):
    """A video file or camera that OpenCV cannot open or read."""


@dataclass
class FaceScore:
    box: Box
    scores: dict[str, float]
    winner: str


@dataclass
class VideoResult:
    video: Path
    csv: Path
    frames: int  # frames written
    scored: int  # frames scored
    faces: int  # faces scored over all frames
    fps: float
    size: tuple[int, int]  # (width, height)


def csv_header(class_names: Sequence[str]) -> list[str]:
    return ["frame", "time_s", "face", "x", "y", "w", "h", "winner", "score", *class_names]


def open_source(source: str | Path | int) -> cv2.VideoCapture:
    """A capture of a video file (path) or a camera (index); :class:`VideoSourceError` if it cannot be read."""
    if isinstance(source, int):
        cap = cv2.VideoCapture(source)
        if not cap.isOpened():
            raise VideoSourceError(
                f"camera {source} cannot be opened: no camera at that index on this machine "
                "(--camera needs a camera device, e.g. /dev/video0; use --video FILE otherwise)"
            )
        return cap
    path = Path(source)
    if not path.is_file():
        raise VideoSourceError(f"video file {path} does not exist")
    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        raise VideoSourceError(f"{path}: OpenCV cannot open it (not a video, or an unsupported codec)")
    return cap


def open_writer(out_dir: Path, fps: float, size: tuple[int, int]) -> tuple[cv2.VideoWriter, Path]:
    """``annotated.mp4`` (mp4v), else ``annotated.avi`` (MJPG) when the first codec is unavailable."""
    for fourcc, suffix in CODECS:
        path = out_dir / f"annotated{suffix}"
        writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), fps, size)
        if writer.isOpened():
            return writer, path
        writer.release()
        path.unlink(missing_ok=True)
        log.warning("OpenCV cannot write %s with codec %s; trying the next one", path.name, fourcc)
    raise RuntimeError(f"OpenCV can write neither {' nor '.join(f for f, _ in CODECS)} video in {out_dir}")


def score_faces(loaded: LoadedRun, cropper, frame_rgb: np.ndarray) -> list[FaceScore]:
    """Every detected face of an RGB frame with its class scores, largest face first."""
    crops = cropper.crop_all(frame_rgb)
    if not crops:
        return []
    probs, _ = predict_arrays(loaded, [c.image for c in crops])
    names = loaded.class_names
    return [
        FaceScore(c.box, {n: float(v) for n, v in zip(names, p, strict=True)}, names[int(np.argmax(p))])
        for c, p in zip(crops, probs, strict=True)
    ]


def draw_faces(frame_bgr: np.ndarray, faces: Sequence[FaceScore], class_names: Sequence[str]) -> np.ndarray:
    """The frame with, per face: its box, ``winner score`` above it and one bar per class beside it."""
    out = frame_bgr.copy()
    height, width = out.shape[:2]
    scale = max(0.35, min(width, height) / 600)
    thickness = max(1, round(min(width, height) / 300))
    for face in faces:
        x, y, w, h = face.box
        cv2.rectangle(out, (x, y), (x + w - 1, y + h - 1), BOX_COLOR, thickness)
        label = f"{face.winner} {face.scores[face.winner]:.2f}"
        (tw, th), base = cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, scale, thickness)
        ty = y - 4 if y - th - base - 4 >= 0 else min(height - 1, y + h + th + 4)
        cv2.rectangle(out, (x, ty - th - base), (min(width - 1, x + tw), ty + base), (0, 0, 0), -1)
        cv2.putText(out, label, (x, ty), cv2.FONT_HERSHEY_SIMPLEX, scale, WINNER_COLOR, thickness, cv2.LINE_AA)
        _draw_bars(out, face, class_names, scale)
    return out


def _draw_bars(out: np.ndarray, face: FaceScore, class_names: Sequence[str], scale: float) -> None:
    """A small bar chart of the class scores right of the box (left of it when there is no room)."""
    height, width = out.shape[:2]
    x, y, w, h = face.box
    row = max(4, round(h / (len(class_names) + 1)))
    bar_w = max(20, w // 2)
    x0 = x + w + 4 if x + w + 4 + bar_w < width else max(0, x - 4 - bar_w)
    for i, name in enumerate(class_names):
        top = y + i * row
        if top + row > height:
            break
        value = face.scores[name]
        color = WINNER_COLOR if name == face.winner else BAR_COLOR
        cv2.rectangle(out, (x0, top + 1), (x0 + bar_w, top + row - 1), (40, 40, 40), -1)
        cv2.rectangle(out, (x0, top + 1), (x0 + max(1, round(value * bar_w)), top + row - 1), color, -1)
        if row >= 9:
            cv2.putText(out, name[:3], (x0 + 2, top + row - 2), cv2.FONT_HERSHEY_SIMPLEX, min(scale, row / 30),
                        (255, 255, 255), 1, cv2.LINE_AA)


def csv_rows(frame: int, time_s: float, faces: Sequence[FaceScore], class_names: Sequence[str]) -> list[list[object]]:
    if not faces:
        return [[frame, f"{time_s:.3f}", "", "", "", "", "", NO_FACE, "", *([""] * len(class_names))]]
    return [
        [frame, f"{time_s:.3f}", i, *f.box, f.winner, f"{f.scores[f.winner]:.6f}", *(f"{f.scores[c]:.6f}" for c in class_names)]
        for i, f in enumerate(faces)
    ]


def annotate_video(
    loaded: LoadedRun,
    source: str | Path | int,
    out_dir: str | Path,
    *,
    every: int = 1,
    max_frames: int | None = None,
) -> VideoResult:
    """Score the faces of every ``every``-th frame of ``source`` (a file, or a camera index) and write
    ``out_dir/annotated.mp4`` (or ``.avi``) and ``out_dir/frames.csv``; ``max_frames`` stops early
    (a camera runs until then or Ctrl-C; what was written up to then is kept and playable)."""
    if every < 1:
        raise ValueError(f"--every must be >= 1, got {every}")
    if max_frames is not None and max_frames < 1:
        raise ValueError(f"--max-frames must be >= 1, got {max_frames}")
    cap = open_source(source)
    cropper = haar_cropper(loaded.faces, fallback=False)
    out_dir = Path(out_dir)
    try:
        fps = cap.get(cv2.CAP_PROP_FPS) or 0.0
        fps = fps if 0 < fps < 1000 else DEFAULT_FPS
        total = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0) if not isinstance(source, int) else 0
        if max_frames is not None:
            total = min(total, max_frames) if total else max_frames
        ok, frame = cap.read()
        if not ok:  # checked before anything is written
            raise VideoSourceError(f"{source}: OpenCV cannot read a frame from it (not a video, or an unsupported codec)")
        size = (frame.shape[1], frame.shape[0])
        out_dir.mkdir(parents=True, exist_ok=True)
        writer, video_path = open_writer(out_dir, fps, size)
        csv_path = out_dir / "frames.csv"
        names = loaded.class_names
        written = scored = n_faces = 0
        faces: list[FaceScore] = []
        try:
            with csv_path.open("w", newline="") as handle, tqdm(total=total or None, unit="frame", desc="video",
                                                                  disable=None) as bar:
                table = csv.writer(handle)
                table.writerow(csv_header(names))
                while ok:
                    if frame.shape[1] != size[0] or frame.shape[0] != size[1]:
                        frame = cv2.resize(frame, size, interpolation=cv2.INTER_AREA)
                    if written % every == 0:
                        faces = score_faces(loaded, cropper, cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
                        table.writerows(csv_rows(written, written / fps, faces, names))
                        scored += 1
                        n_faces += len(faces)
                    writer.write(draw_faces(frame, faces, names))
                    written += 1
                    bar.update(1)
                    if max_frames is not None and written >= max_frames:
                        break
                    ok, frame = cap.read()
        finally:
            writer.release()
    finally:
        cap.release()
    log.info(
        "video: %d frame(s) written to %s, %d scored (every %d), %d face(s); per-frame scores in %s",
        written, video_path, scored, every, n_faces, csv_path,
    )
    return VideoResult(video_path, csv_path, written, scored, n_faces, fps, size)


def video_cli(
    source: Path | int, *, run: Path | None, onnx: Path | None, out: Path | None, checkpoint: str, every: int,
    max_frames: int | None,
) -> VideoResult:
    """``poetry run predict --video FILE`` / ``--camera INDEX`` with a run folder or an exported ONNX model.
    Default output: ``<run>/predictions/video/<file stem>`` (``camera<INDEX>`` for a camera)."""
    if every < 1:
        raise ValueError(f"--every must be >= 1, got {every}")
    if not isinstance(source, int) and not Path(source).is_file():
        raise VideoSourceError(f"video file {source} does not exist")
    if onnx is not None:
        loaded = load_onnx(onnx)
    else:
        loaded = load_run(run, which=checkpoint)
        log.info("scoring with %s", loaded.description)
    name = f"camera{source}" if isinstance(source, int) else Path(source).stem
    assert loaded.predictions_dir is not None
    return annotate_video(loaded, source, out or loaded.predictions_dir / "video" / name, every=every, max_frames=max_frames)
