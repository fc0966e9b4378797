"""Write a synthetic world in the SAMA-239K layout.

    <out_dir>/frames/<video_id>/00000.png ...   one frame folder per video
    <out_dir>/<split>.json                      records (a JSON list), `video` = "frames/<video_id>"
    <out_dir>/<split>_masks.json                mask dict {mask_id: [per-frame COCO RLE or null]}
    <out_dir>/<split>_manifest.json             seed, settings, the held-out rule and every VideoSpec

Video `i` of a split is drawn from `numpy.random.default_rng([seed, split_code, i])`,
so it depends on nothing but (seed, split, i) and the settings: the same call
writes the same bytes, in one process or several. Mask ids are
`split_code * 10_000_000 + i * 10 + k` (object k of video i), unique across splits.
A mask is null on frames where the object shows no pixel.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from ...masks import encode_rle
from ...schemas import validate_record
from .language import ObjectFacts, make_conversation
from .sampling import sample_scene, visible_frames
from .scene import RenderedVideo, VideoSpec, render
from .vocabulary import SPLIT_RULE, SPLITS

GENERATOR_VERSION = "sama-agent-world/1"
SPLIT_CODES = {"train": 1, "val": 2, "heldout": 3}
IMAGE_FORMATS = {"png": ".png", "jpg": ".jpg"}


@dataclass(frozen=True)
class WorldSettings:
    split: str = "train"
    seed: int = 0
    height: int = 128
    width: int = 128
    frames: tuple[int, int] = (16, 32)  # inclusive range of frames per video
    objects: tuple[int, int] = (2, 4)
    turns: tuple[int, int] = (2, 5)
    image_format: str = "png"

    def check(self) -> "WorldSettings":
        if self.split not in SPLITS:
            raise ValueError(f"unknown split '{self.split}'; choose one of {', '.join(SPLITS)}.")
        if self.image_format not in IMAGE_FORMATS:
            raise ValueError(f"unknown image format '{self.image_format}'; choose png (exact colours) or jpg.")
        for name in ("frames", "objects", "turns"):
            low, high = getattr(self, name)
            if not 1 <= low <= high:
                raise ValueError(f"{name} must be a range low..high with 1 <= low <= high, got {low}..{high}.")
        if self.objects[1] > 9:
            raise ValueError("at most 9 objects per video (mask ids reserve one digit for the object).")
        if min(self.height, self.width) < 32:
            raise ValueError(f"frames of {self.width}x{self.height} are too small; use at least 32x32.")
        return self


def _range(value: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(value, (int, np.integer)):
        return int(value), int(value)
    low, high = value
    return int(low), int(high)


def generate_world(
    out_dir: str | Path,
    num_videos: int,
    split: str = "train",
    seed: int = 0,
    size: int | Sequence[int] = 128,
    frames: int | Sequence[int] = (16, 32),
    *,
    objects: int | Sequence[int] = (2, 4),
    turns: int | Sequence[int] = (2, 5),
    image_format: str = "png",
    workers: int = 1,
    progress: bool = False,
) -> dict:
    """Generate `num_videos` videos of one split under `out_dir`; returns the paths written.

    size: side of a square frame, or (height, width). frames / objects / turns:
    a number or an inclusive (low, high) range per video.
    """
    height, width = (size, size) if isinstance(size, (int, np.integer)) else (int(size[0]), int(size[1]))
    settings = WorldSettings(split, int(seed), int(height), int(width), _range(frames), _range(objects), _range(turns), image_format).check()
    out_dir = Path(out_dir)
    (out_dir / "frames").mkdir(parents=True, exist_ok=True)
    jobs = [(settings, str(out_dir), index) for index in range(num_videos)]
    if workers > 1:
        with get_context("spawn").Pool(workers) as pool:
            results = list(_progress(pool.imap(_make_video_job, jobs, chunksize=4), num_videos, progress, split))
    else:
        results = list(_progress(map(_make_video_job, jobs), num_videos, progress, split))
    records, masks, specs = [], {}, []
    for record, video_masks, spec in results:
        records.append(record)
        masks.update(video_masks)
        specs.append(spec)
    paths = {
        "records": out_dir / f"{split}.json",
        "masks": out_dir / f"{split}_masks.json",
        "manifest": out_dir / f"{split}_manifest.json",
        "frames": out_dir / "frames",
    }
    manifest = {
        "generator": GENERATOR_VERSION,
        "split": split,
        "seed": settings.seed,
        "num_videos": num_videos,
        "settings": {"height": height, "width": width, "frames": list(settings.frames), "objects": list(settings.objects),
                     "turns": list(settings.turns), "image_format": image_format},
        "heldout_rule": SPLIT_RULE,
        "videos": specs,
    }
    _write_json(paths["records"], records, indent=1)
    _write_json(paths["masks"], masks)
    _write_json(paths["manifest"], manifest, indent=1)
    return paths


def _make_video_job(job) -> tuple[dict, dict, dict]:
    settings, out_dir, index = job
    return make_video(settings, Path(out_dir), index)


def make_video(settings: WorldSettings, out_dir: Path, index: int) -> tuple[dict, dict, dict]:
    """Draw, render and write video `index`; returns (record, its masks, its spec as JSON)."""
    code = SPLIT_CODES[settings.split]
    rng = np.random.default_rng([settings.seed, code, index])
    num_frames = int(rng.integers(settings.frames[0], settings.frames[1] + 1))
    num_objects = int(rng.integers(settings.objects[0], settings.objects[1] + 1))
    video_id = f"{settings.split}_{index:05d}"
    spec, rendered = sample_scene(rng, video_id, settings.split, settings.height, settings.width, num_frames, num_objects)
    for k, obj in enumerate(spec.objects):
        obj.mask_id = code * 10_000_000 + index * 10 + k
    facts = object_facts(spec, rendered)
    conversation = make_conversation(rng, facts, int(rng.integers(settings.turns[0], settings.turns[1] + 1)))

    folder = out_dir / "frames" / video_id
    folder.mkdir(parents=True, exist_ok=True)
    stems = [f"{f:05d}" for f in range(num_frames)]
    for stem, frame in zip(stems, rendered.frames):
        _save_image(frame, folder / f"{stem}{IMAGE_FORMATS[settings.image_format]}", settings.image_format)
    masks = {str(obj.mask_id): [encode_rle(m) if m.any() else None for m in rendered.masks[k]] for k, obj in enumerate(spec.objects)}

    human_turns = conversation.turns[0::2]
    for t, turn in enumerate(human_turns):
        turn["question_id"] = f"{video_id}_q{t}"
    record = {
        "video": f"frames/{video_id}",
        "frames": stems,
        "height": settings.height,
        "width": settings.width,
        "anno_map": [obj.mask_id for obj in spec.objects],
        "conversation": conversation.turns,
        "obj_masks": conversation.obj_masks,
        "groundtruth": conversation.groundtruth,
        "description": {f"obj{k}": _caption(f) for k, f in enumerate(facts)},
        "meta": {
            "generator": GENERATOR_VERSION,
            "split": settings.split,
            "seed": settings.seed,
            "index": index,
            "objects": [
                {"mask_id": f.mask_id, "name": f.name, **f.expect(), "size": f.spec.size, "depth": f.spec.depth,
                 "entered": f.entered, "left": f.left, "visible_frames": f.visible_frames}
                for f in facts
            ],
            "turns": conversation.meta,
        },
    }
    validate_record(record, file=str(out_dir / f"{settings.split}.json"), index=index, masks=masks)
    return record, masks, spec.to_json()


def object_facts(spec: VideoSpec, rendered: RenderedVideo) -> list[ObjectFacts]:
    """Entering / leaving and visibility, read off the rendered frames."""
    facts = []
    for k, obj in enumerate(spec.objects):
        share = rendered.in_frame[k]
        fully_in = np.nonzero(share > 0.95)[0]
        entered = bool(share[0] < 0.5 and len(fully_in) > 0)
        left = bool(share[-1] < 0.5 and len(fully_in) > 0 and fully_in[0] < len(share) - 1)
        facts.append(ObjectFacts(obj, entered, left, visible_frames(rendered, k)))
    return facts


def _caption(facts: ObjectFacts) -> str:
    text = f"{facts.name} {facts.action()}."
    return text[0].upper() + text[1:]


def _save_image(frame: np.ndarray, path: Path, image_format: str) -> None:
    image = Image.fromarray(frame)
    if image_format == "png":
        image.save(path, format="PNG", compress_level=6)
    else:
        image.save(path, format="JPEG", quality=95)


def _write_json(path: Path, data, indent: int | None = None) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "w") as handle:
        json.dump(data, handle, indent=indent, separators=(",", ":") if indent is None else None)
    os.replace(tmp, path)


def _progress(iterable, total: int, enabled: bool, split: str):
    if not enabled:
        return iterable
    from tqdm import tqdm

    return tqdm(iterable, total=total, desc=f"world {split}", unit="video")


# ---- re-rendering and MP4 --------------------------------------------------------------
def load_spec(manifest_path: str | Path, video_id: str) -> VideoSpec:
    """The VideoSpec of one video from a manifest (to re-render it exactly)."""
    manifest = json.loads(Path(manifest_path).read_text())
    for entry in manifest["videos"]:
        if entry["video_id"] == video_id:
            return VideoSpec.from_json(entry)
    raise KeyError(f"{manifest_path}: no video '{video_id}' in this manifest.")


def write_mp4(frames: np.ndarray, path: str | Path, fps: float = 8.0) -> Path:
    """(T, H, W, 3) uint8 RGB -> an MP4 (OpenCV, mp4v codec)."""
    import cv2

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    count, height, width = frames.shape[:3]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), float(fps), (width, height))
    if not writer.isOpened():
        raise RuntimeError(f"OpenCV could not open {path} for writing an mp4v video.")
    try:
        for frame in frames:
            writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    finally:
        writer.release()
    return path


def render_video_mp4(out_path: str | Path, *, seed: int = 0, split: str = "heldout", index: int = 0, size: int | Sequence[int] = 128,
                     frames: int | Sequence[int] = 24, objects: int | Sequence[int] = (2, 4), turns: int | Sequence[int] = (2, 5),
                     fps: float = 8.0, record_path: str | Path | None = None) -> dict:
    """Render video `index` of a split straight to an MP4 (for a bundled sample); returns its record.

    The record's masks are embedded under `masks` when `record_path` is given, so the
    sample is self-contained: {"record": ..., "masks": {...}, "spec": ...}.
    """
    import tempfile

    height, width = (size, size) if isinstance(size, (int, np.integer)) else (int(size[0]), int(size[1]))
    settings = WorldSettings(split, int(seed), height, width, _range(frames), _range(objects), _range(turns), "png").check()
    with tempfile.TemporaryDirectory() as scratch:
        record, masks, spec = make_video(settings, Path(scratch), index)
    rendered = render(VideoSpec.from_json(spec))
    write_mp4(rendered.frames, out_path, fps)
    sample = {"record": record, "masks": masks, "spec": spec}
    if record_path is not None:
        _write_json(Path(record_path), sample, indent=1)
    return sample
