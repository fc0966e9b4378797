"""Videos: decord-backed video files and SAMA-239K frame folders, read lazily.

Frames come out as RGB uint8 arrays of shape (H, W, 3); batches as (T, H, W, 3).
Nothing is decoded until asked for, so a long clip can be streamed frame by
frame with bounded memory (`iter_frames`).
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
from PIL import Image

from .errors import VideoError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
DEFAULT_FOLDER_FPS = 1.0  # SAMA-239K frame folders carry no frame rate


def _natural_key(name: str):
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


@dataclass(frozen=True)
class VideoInfo:
    path: str
    num_frames: int
    fps: float
    height: int
    width: int

    @property
    def duration(self) -> float:
        return self.num_frames / self.fps


class Video:
    """A video file (anything ffmpeg reads) or a folder of frame images."""

    def __init__(self, path: str | Path, *, fps: float | None = None, frames: Sequence[str] | None = None):
        self.path = Path(path)
        if not self.path.exists():
            raise VideoError(f"{self.path}: no such file or folder. Check the path to the video.")
        if self.path.is_dir():
            self._files = _frame_files(self.path, frames)
            self._reader = None
            first = _read_image(self._files[0])
            self.height, self.width = first.shape[:2]
            self.num_frames = len(self._files)
            self.fps = float(fps or DEFAULT_FOLDER_FPS)
        else:
            self._files = None
            self._reader = _open_reader(self.path)
            self.num_frames = len(self._reader)
            self.height, self.width = self._reader[0].shape[:2]
            self.fps = float(fps or self._reader.get_avg_fps() or DEFAULT_FOLDER_FPS)
            _check_decodable_end(self.path, self._reader)

    @classmethod
    def open(cls, path: str | Path, **kwargs) -> "Video":
        return cls(path, **kwargs)

    # ---- geometry and time -------------------------------------------------
    def __len__(self) -> int:
        return self.num_frames

    def __repr__(self) -> str:
        return f"Video({str(self.path)!r}, frames={self.num_frames}, size={self.width}x{self.height}, fps={self.fps:g})"

    @property
    def size(self) -> tuple[int, int]:
        """(height, width)."""
        return self.height, self.width

    @property
    def duration(self) -> float:
        return self.num_frames / self.fps

    @property
    def info(self) -> VideoInfo:
        return VideoInfo(str(self.path), self.num_frames, self.fps, self.height, self.width)

    def timestamp(self, index: int) -> float:
        """Seconds from the start to frame `index`."""
        return self.check_index(index) / self.fps

    def index_at(self, seconds: float) -> int:
        """The frame shown at `seconds`."""
        if not 0 <= seconds < self.duration:
            raise VideoError(f"{self.path}: time {seconds:g}s is outside the video (0 to {self.duration:g}s).")
        return min(int(math.floor(seconds * self.fps + 1e-9)), self.num_frames - 1)

    def check_index(self, index: int) -> int:
        if not isinstance(index, (int, np.integer)) or not 0 <= index < self.num_frames:
            raise VideoError(
                f"{self.path}: frame index {index} is out of range; this video has frames 0 to {self.num_frames - 1}."
            )
        return int(index)

    # ---- sampling ----------------------------------------------------------
    def sample(self, count: int | None = None, *, stride: int | None = None, seconds: float | None = None) -> list[int]:
        """Frame indices: `count` spread evenly, every `stride`-th frame, or one every `seconds`."""
        chosen = [x is not None for x in (count, stride, seconds)]
        if sum(chosen) != 1:
            raise ValueError("give exactly one of count, stride or seconds")
        if count is not None:
            if count <= 0:
                raise ValueError("count must be positive")
            if count >= self.num_frames:
                return list(range(self.num_frames))
            # centre of each of `count` equal segments: deterministic and covers the clip
            return [int((i + 0.5) * self.num_frames / count) for i in range(count)]
        if stride is not None:
            if stride <= 0:
                raise ValueError("stride must be positive")
            return list(range(0, self.num_frames, stride))
        if seconds <= 0:
            raise ValueError("seconds must be positive")
        step = seconds * self.fps
        count = math.ceil(self.num_frames / step - 1e-9)
        return sorted({int(math.floor(i * step + 1e-9)) for i in range(count)})

    # ---- decoding ----------------------------------------------------------
    def frame(self, index: int) -> np.ndarray:
        """One RGB frame, (H, W, 3) uint8."""
        return self.frames([index])[0]

    def frames(self, indices: Sequence[int]) -> np.ndarray:
        """RGB frames, (T, H, W, 3) uint8."""
        indices = [self.check_index(i) for i in indices]
        if not indices:
            return np.zeros((0, self.height, self.width, 3), np.uint8)
        if self._files is not None:
            return np.stack([self._folder_frame(i) for i in indices])
        try:
            return self._reader.get_batch(indices).asnumpy()
        except Exception as exc:  # decord raises its own types from C++
            raise VideoError(
                f"{self.path}: could not decode frames {indices[0]}..{indices[-1]} ({exc.__class__.__name__}). "
                "The file may be truncated or corrupt; re-encode or re-download it."
            ) from None

    def iter_frames(self, indices: Sequence[int] | None = None, batch: int = 8) -> Iterator[tuple[int, np.ndarray]]:
        """Stream (index, frame) pairs, decoding `batch` frames at a time."""
        indices = list(range(self.num_frames)) if indices is None else list(indices)
        for start in range(0, len(indices), batch):
            chunk = indices[start : start + batch]
            yield from zip(chunk, self.frames(chunk))

    def _folder_frame(self, index: int) -> np.ndarray:
        image = _read_image(self._files[index])
        if image.shape[:2] != (self.height, self.width):
            raise VideoError(
                f"{self._files[index]}: frame is {image.shape[1]}x{image.shape[0]} but the folder's first frame is "
                f"{self.width}x{self.height}. All frames of a video must have one size."
            )
        return image


def _frame_files(folder: Path, stems: Sequence[str] | None) -> list[Path]:
    if stems is not None:
        files = []
        for stem in stems:
            matches = [folder / f"{stem}{s}" for s in IMAGE_SUFFIXES if (folder / f"{stem}{s}").exists()]
            if not matches:
                raise VideoError(f"{folder}: frame '{stem}' is missing (looked for {stem}.jpg / .png).")
            files.append(matches[0])
    else:
        files = sorted((p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES), key=lambda p: _natural_key(p.name))
    if not files:
        raise VideoError(f"{folder}: the folder holds no frame images (.jpg, .png). Point at a video file or a frame folder.")
    return files


def _read_image(path: Path) -> np.ndarray:
    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB"))
    except Exception as exc:
        raise VideoError(f"{path}: not a readable image ({exc}). Replace or remove this frame.") from None


def _open_reader(path: Path):
    import decord

    size = path.stat().st_size
    if size == 0:
        raise VideoError(f"{path}: the file is empty (0 bytes). Point at a real video file.")
    with open(path, "rb") as handle:
        head = handle.read(512)
    if _looks_like_text(head):
        raise VideoError(f"{path}: this is a text file, not a video. Point at a video file (mp4, avi, mkv, ...) or a frame folder.")
    try:
        reader = decord.VideoReader(str(path), num_threads=1)
    except Exception as exc:
        raise VideoError(
            f"{path}: not a readable video ({_first_line(exc)}). The file is corrupt, truncated or not a video; "
            "re-encode it (for example with ffmpeg) or point at a frame folder."
        ) from None
    if len(reader) == 0:
        raise VideoError(f"{path}: the video has no frames. Point at a video with at least one frame.")
    return reader


def _check_decodable_end(path: Path, reader) -> None:
    """A truncated file can open and still fail near the end; find out now, not mid-chat."""
    try:
        reader.seek(0)
        reader[len(reader) - 1].asnumpy()
        reader.seek(0)
    except Exception as exc:
        raise VideoError(
            f"{path}: the last frame ({len(reader) - 1}) cannot be decoded ({_first_line(exc)}); "
            "the file is probably truncated. Re-encode or re-download it."
        ) from None


def _looks_like_text(head: bytes) -> bool:
    if not head:
        return False
    try:
        head.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return all(32 <= b < 127 or b in (9, 10, 13) for b in head)


def _first_line(exc: Exception) -> str:
    """decord's message without its timestamp and C++ source location."""
    lines = str(exc).strip().splitlines()
    if not lines:
        return exc.__class__.__name__
    text = re.sub(r"^\[[\d:]+\]\s*\S+:\d+:\s*", "", lines[0])
    return text[:160]
