"""Files a chat turn leaves behind: overlay PNGs on the key frames, an animated
overlay of the whole clip, and each grounded mask as RLE JSON and per-frame PNGs.

    <turn dir>/answer.json                    the turn (text, phrases, handles, files)
    <turn dir>/overlay_frame_00012.png        key frame 12 with every grounded mask drawn on
    <turn dir>/overlay.gif                    the whole clip (subsampled to at most max_gif_frames)
    <turn dir>/masks/<handle>.json            COCO RLE per frame
    <turn dir>/masks/<handle>/frame_00012.png binary mask per frame
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from .masks import MaskStore, MaskTrack
from .overlay import overlay_masks
from .video import Video


@dataclass
class TurnFiles:
    folder: Path
    answer: Path
    overlays: list[Path] = field(default_factory=list)
    animation: Path | None = None
    rle: dict[str, Path] = field(default_factory=dict)
    png_dirs: dict[str, Path] = field(default_factory=dict)

    def to_json(self) -> dict:
        return {
            "folder": str(self.folder),
            "answer": str(self.answer),
            "overlays": [str(p) for p in self.overlays],
            "animation": str(self.animation) if self.animation else None,
            "rle": {h: str(p) for h, p in self.rle.items()},
            "png_dirs": {h: str(p) for h, p in self.png_dirs.items()},
        }


def write_turn(answer, video: Video, store: MaskStore, folder: str | Path, *, animation: bool = True,
               max_gif_frames: int = 120, gif_width: int = 480) -> TurnFiles:
    """Write every file of one answered turn into `folder` (created)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    files = TurnFiles(folder, folder / "answer.json")
    tracks = [store.get(handle) for handle in answer.handles]
    for handle in answer.handles:
        files.rle[str(handle)] = store.export(handle, folder / "masks", "rle")[0]
        written = store.export(handle, folder / "masks", "png")
        files.png_dirs[str(handle)] = written[0].parent if written else folder / "masks" / str(handle)
    if tracks:
        files.overlays = write_key_frame_overlays(video, tracks, answer.key_frames, folder)
        if animation:
            files.animation = write_animation(video, tracks, folder / "overlay.gif", max_frames=max_gif_frames, width=gif_width)
    files.answer.write_text(json.dumps({**answer.to_json(), "files": files.to_json()}, indent=1))
    return files


def masks_on(frame_index: int, tracks: Sequence[MaskTrack]) -> list[np.ndarray]:
    """Each track's mask on a frame; an unsegmented frame counts as empty."""
    return [t.mask(frame_index) if frame_index in t.rles else np.zeros((t.height, t.width), bool) for t in tracks]


def write_key_frame_overlays(video: Video, tracks: Sequence[MaskTrack], key_frames: Sequence[int], folder: Path) -> list[Path]:
    written = []
    for index, frame in video.iter_frames(sorted(set(int(k) for k in key_frames))):
        path = folder / f"overlay_frame_{index:05d}.png"
        Image.fromarray(overlay_masks(frame, masks_on(index, tracks))).save(path)
        written.append(path)
    return written


def write_animation(video: Video, tracks: Sequence[MaskTrack], path: Path, *, max_frames: int = 120, width: int = 480) -> Path:
    """An animated GIF of the clip with the masks drawn on, streamed frame by frame.

    Long clips are subsampled evenly to at most `max_frames`, and frames wider than
    `width` are scaled down, so the file stays small; the playback speed follows the video.
    """
    stride = max(1, math.ceil(video.num_frames / max_frames))
    indices = list(range(0, video.num_frames, stride))
    scale = min(1.0, width / video.width)
    size = (max(1, round(video.width * scale)), max(1, round(video.height * scale)))
    images = []
    for index, frame in video.iter_frames(indices):
        image = Image.fromarray(overlay_masks(frame, masks_on(index, tracks)))
        if scale < 1.0:
            image = image.resize(size, Image.BILINEAR)
        images.append(image.quantize(colors=128, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE))
    milliseconds = max(20, round(1000 * stride / max(video.fps, 1e-6)))
    images[0].save(path, save_all=True, append_images=images[1:], duration=milliseconds, loop=0, optimize=False)
    return path
