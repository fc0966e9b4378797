"""SAMA-239K / SAMA-Bench datasets: frame folders + mask dicts + JSON records -> ConversationSample.

Layout (the real one; the synthetic world writes the same):

    <root>/<record.video>/<stem>.jpg|.png   one folder of frames per video
    records JSON: a list of records (sama_agent/schemas.py)
    mask dict JSON: {mask_id: [per-frame COCO RLE or null]}

Several mask dicts can be given as a list (merged; ids must not collide) or,
as SAMA-239K ships them per source dataset, as a mapping from a substring
of `video` to the dict file that serves those videos.

Every record is validated when the dataset is built (schema, turn structure,
mask references, frame files on disk). `on_error` decides what a bad record
does: "raise" stops with a RecordError naming the file, the record and the
field; "skip" leaves it out, logs a warning per record and counts it in
`dataset.skipped` (the training runner reports the count). Nothing is
dropped silently.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
from PIL import Image

from ..conversation import ConversationSample, Turn
from ..errors import RecordError
from ..jsonfile import read_json
from ..masks import decode_rle
from ..schemas import validate_record
from ..video import IMAGE_SUFFIXES

logger = logging.getLogger("sama_agent.training.datasets")
ON_ERROR = ("raise", "skip")
SAMPLING = ("uniform", "random")


@dataclass
class DatasetConfig:
    """Where the data is and how to turn a record into a sample.

    root: the folder `video` paths are relative to. records: JSON file(s), relative to root or absolute.
    masks: mask dict file(s): a path, a list of paths, or {video substring: path}.
    num_frames: frames T sampled per video (all when the video has fewer).
    sampling: "uniform" (centre of T equal segments; deterministic) or "random" (a random frame
        in each segment, seeded by (seed, epoch, index) so a resumed run sees the same frames).
    image_size: resize frames and masks to this side, or [height, width]; null keeps the size.
    on_error: "raise" or "skip" (counted and reported).
    turn_kinds: keep only turns of these kinds (record meta, or inferred: refer / ground /
        refer_ground / chat); a follow-up whose earlier turn is dropped goes too.
    max_turns: keep at most this many turns per sample.
    check_frames: check at load time that every frame file exists.
    limit: use only the first N records (after validation).
    object_masks: also load the mask of every object the record's meta lists (`meta.objects[i].mask_id`,
        as the world writes) into sample.meta["object_masks"] (objects, T, H, W), in the meta's order.
    """

    root: str
    records: str | list[str]
    masks: str | list[str] | dict[str, str] | None = None
    num_frames: int = 8
    sampling: str = "uniform"
    image_size: int | list[int] | None = None
    on_error: str = "raise"
    turn_kinds: list[str] | None = None
    max_turns: int | None = None
    check_frames: bool = True
    limit: int | None = None
    object_masks: bool = False

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, where: str = "data") -> "DatasetConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"{where}: unknown option(s) {', '.join(unknown)}; known options: {', '.join(sorted(known))}.")
        config = cls(**data)
        if config.on_error not in ON_ERROR:
            raise ValueError(f"{where}.on_error must be one of {ON_ERROR}, got '{config.on_error}'.")
        if config.sampling not in SAMPLING:
            raise ValueError(f"{where}.sampling must be one of {SAMPLING}, got '{config.sampling}'.")
        if config.num_frames < 1:
            raise ValueError(f"{where}.num_frames must be at least 1.")
        return config


@dataclass(frozen=True)
class SkippedRecord:
    file: str
    index: int | str
    reason: str

    def __str__(self) -> str:
        return self.reason if self.file in self.reason else f"{self.file}, record {self.index}: {self.reason}"


@dataclass
class _Entry:
    file: str
    index: int
    record: dict
    masks: Mapping
    turns: list[int]  # indices of the human turns kept
    kinds: list[str] = field(default_factory=list)


class SamaDataset:
    """Indexable conversations; `dataset[i]` is deterministic, `dataset.sample(i, epoch)` draws frames."""

    def __init__(self, config: DatasetConfig | Mapping, *, seed: int = 0):
        self.config = config if isinstance(config, DatasetConfig) else DatasetConfig.from_dict(config)
        self.seed = seed
        self.root = Path(self.config.root)
        self.skipped: list[SkippedRecord] = []
        self._broken: set[tuple[str, int]] = set()
        self.filtered = 0  # records with no turn left after turn_kinds / max_turns (not errors)
        self._mask_sources = _load_mask_sources(self.root, self.config.masks)
        self.entries: list[_Entry] = []
        for file in _as_list(self.config.records):
            self._add_file(self._path(file))
        if self.config.limit is not None:
            self.entries = self.entries[: self.config.limit]
        if self.skipped:
            logger.warning("%d record(s) skipped as invalid (on_error=skip); first: %s", len(self.skipped), self.skipped[0])
        if not self.entries:
            raise RecordError(
                f"no usable records in {', '.join(map(str, _as_list(self.config.records)))} "
                f"({len(self.skipped)} invalid, {self.filtered} with no turn of the kinds asked for)."
            )

    # ---- building ------------------------------------------------------------
    def _path(self, name: str) -> Path:
        path = Path(name)
        return path if path.is_absolute() else self.root / path

    def _add_file(self, path: Path) -> None:
        records = read_json(path, RecordError, missing="records file not found. Check `root` and `records` in the data config.",
                            expected=list, expected_what="a JSON list of records")
        for index, record in enumerate(records):
            try:
                entry = self._entry(str(path), index, record)
            except RecordError as exc:
                self._fail(str(path), index, str(exc))
                continue
            if entry is None:
                self.filtered += 1
            else:
                self.entries.append(entry)

    def _fail(self, file: str, index: int | str, reason: str) -> None:
        if self.config.on_error == "raise":
            raise RecordError(reason if file in reason else f"{file}, record {index}: {reason}")
        skipped = SkippedRecord(file, index, reason)
        self.skipped.append(skipped)
        logger.warning("skipping %s", skipped)

    def _entry(self, file: str, index: int, record: Any) -> _Entry | None:
        video = record.get("video", "") if isinstance(record, dict) else ""
        masks = self._masks_for(video, file, index)
        validate_record(record, file=file, index=index, masks=masks)
        if self.config.check_frames:
            self._check_frames(file, index, record)
        kinds = turn_kinds(record)
        kept = _kept_turns(record, kinds, self.config.turn_kinds)
        if self.config.max_turns is not None:
            kept = kept[: self.config.max_turns]
        if not kept:
            return None
        return _Entry(file, index, record, masks, kept, kinds)

    def _masks_for(self, video: str, file: str, index: int) -> Mapping:
        for key, masks in self._mask_sources:
            if key is None or key in video:
                return masks
        if not self._mask_sources:
            return {}
        keys = ", ".join(repr(k) for k, _ in self._mask_sources)
        raise RecordError(f"{file}, record {index}, field video: '{video}' matches no mask dict (keys {keys}).")

    def _check_frames(self, file: str, index: int, record: dict) -> None:
        folder = self.root / record["video"]
        if not folder.is_dir():
            raise RecordError(f"{file}, record {index}, field video: frame folder {folder} does not exist.")
        names = {p.name for p in folder.iterdir()}
        for position, stem in enumerate(record["frames"]):
            if not any(stem + suffix in names for suffix in IMAGE_SUFFIXES):
                raise RecordError(
                    f"{file}, record {index}, field frames[{position}]: frame file {folder / stem}.jpg/.png is missing."
                )

    # ---- access --------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, index: int) -> ConversationSample:
        return self.sample(index)

    def sample(self, index: int, epoch: int = 0) -> ConversationSample:
        """Sample `index`; with sampling="random", frames are drawn from (seed, epoch, index).

        With on_error="skip", a record that fails to load (an unreadable frame, a bad RLE) is
        counted once and the next record is used in its place."""
        for attempt in range(len(self)):
            entry = self.entries[(index + attempt) % len(self)]
            if (entry.file, entry.index) in self._broken:
                continue
            try:
                return self._load(entry, epoch)
            except RecordError as exc:
                if self.config.on_error == "raise":
                    raise
                self._broken.add((entry.file, entry.index))
                self._fail(entry.file, entry.index, str(exc))
        raise RecordError(f"every record failed to load; first problem: {self.skipped[0] if self.skipped else 'unknown'}")

    def report(self) -> dict:
        """Counts for logs: usable records, skipped (with the first reasons), filtered."""
        return {"records": len(self), "skipped": len(self.skipped), "filtered": self.filtered,
                "first_skipped": [str(s) for s in self.skipped[:5]]}

    def _load(self, entry: _Entry, epoch: int) -> ConversationSample:
        record, where = entry.record, f"{entry.file}, record {entry.index}"
        positions = self._positions(len(record["frames"]), epoch, entry)
        frames = np.stack([self._read_frame(entry, p) for p in positions])
        height, width = record["height"], record["width"]
        if frames.shape[1:3] != (height, width):
            raise RecordError(f"{where}, field height/width: the record says {width}x{height}, frames are {frames.shape[2]}x{frames.shape[1]}.")
        cache: dict[str, np.ndarray] = {}

        def volume(mask_id) -> np.ndarray:
            key = str(mask_id)
            if key not in cache:
                cache[key] = self._mask_volume(entry, key, positions, height, width)
            return cache[key]

        empty = np.zeros((len(positions), height, width), bool)
        turns = []
        conversation = record["conversation"]
        for t in entry.turns:
            region_ids = record.get("obj_masks", [[]] * (t + 1))[t]
            seg_lists = record.get("groundtruth", [[]] * (t + 1))[t]
            regions = [empty if str(m) == "-1" else volume(m) for m in region_ids]
            segs = [np.logical_or.reduce([empty] + [volume(m) for m in ids if str(m) != "-1"]) for ids in seg_lists]
            human = conversation[2 * t]
            answer = conversation[2 * t + 1]["value"] if 2 * t + 1 < len(conversation) else ""
            turns.append(Turn(human["value"], answer, _stack(regions, empty), _stack(segs, empty),
                              None if human.get("question_id") is None else str(human["question_id"])))
        object_masks = self._object_masks(entry, volume, empty, where) if self.config.object_masks else None
        frames, turns, object_masks = self._resize(frames, turns, object_masks)
        meta = {
            "file": entry.file, "record_index": entry.index, "video": record["video"], "height": height, "width": width,
            "turn_kinds": [entry.kinds[t] for t in entry.turns], "turn_indices": list(entry.turns),
        }
        extra = record.get("meta")
        if isinstance(extra, dict):
            meta["objects"] = extra.get("objects")
            if isinstance(extra.get("turns"), list):
                meta["turn_meta"] = [extra["turns"][t] for t in entry.turns]
        if "description" in record:
            meta["description"] = record["description"]
        if object_masks is not None:
            meta["object_masks"] = object_masks
        return ConversationSample(Path(record["video"]).name, frames, positions, turns, meta)

    @staticmethod
    def _object_masks(entry: _Entry, volume, empty: np.ndarray, where: str) -> np.ndarray:
        objects = (entry.record.get("meta") or {}).get("objects")
        if not isinstance(objects, list) or not all(isinstance(o, dict) and "mask_id" in o for o in objects):
            raise RecordError(f"{where}, field meta.objects: object_masks needs a list of objects with a mask_id each "
                              "(as the world generator writes); turn object_masks off for data without it.")
        missing = [str(o["mask_id"]) for o in objects if str(o["mask_id"]) not in entry.masks]
        if missing:
            raise RecordError(f"{where}, field meta.objects: mask id(s) {', '.join(missing)} are not in the mask dict.")
        return _stack([volume(o["mask_id"]) for o in objects], empty)

    def _positions(self, count: int, epoch: int, entry: _Entry) -> list[int]:
        wanted = self.config.num_frames
        if count <= wanted:
            return list(range(count))
        if self.config.sampling == "uniform":
            return [int((i + 0.5) * count / wanted) for i in range(wanted)]
        rng = np.random.default_rng([self.seed, epoch, entry.index, len(entry.file)])
        edges = [int(i * count / wanted) for i in range(wanted + 1)]
        return [int(rng.integers(lo, max(lo + 1, hi))) for lo, hi in zip(edges[:-1], edges[1:])]

    def _read_frame(self, entry: _Entry, position: int) -> np.ndarray:
        folder, stem = self.root / entry.record["video"], entry.record["frames"][position]
        for suffix in IMAGE_SUFFIXES:
            path = folder / f"{stem}{suffix}"
            if path.exists():
                try:
                    with Image.open(path) as image:
                        return np.asarray(image.convert("RGB"))
                except Exception as exc:
                    raise RecordError(f"{entry.file}, record {entry.index}, field frames[{position}]: {path} is not a readable image ({exc}).") from None
        raise RecordError(f"{entry.file}, record {entry.index}, field frames[{position}]: frame file {folder / stem}.jpg/.png is missing.")

    def _mask_volume(self, entry: _Entry, key: str, positions: Sequence[int], height: int, width: int) -> np.ndarray:
        track = entry.masks[key]
        out = np.zeros((len(positions), height, width), bool)
        for i, position in enumerate(positions):
            rle = track[position]
            if rle is None:
                continue
            where = f"{entry.file}, record {entry.index}, mask {key}, frame {position}"
            if not isinstance(rle, dict) or "size" not in rle or "counts" not in rle:
                raise RecordError(f"{where}: expected a COCO RLE {{'size': [h, w], 'counts': ...}} or null.")
            if list(rle["size"]) != [height, width]:
                raise RecordError(f"{where}: RLE size {rle['size']} differs from the record's [{height}, {width}].")
            try:
                out[i] = decode_rle(rle)
            except Exception as exc:
                raise RecordError(f"{where}: the RLE does not decode ({exc}).") from None
        return out

    def _resize(self, frames: np.ndarray, turns: list[Turn], object_masks: np.ndarray | None = None):
        """-> (frames, turns, object_masks) at `image_size`."""
        size = self.config.image_size
        if size is None:
            return frames, turns, object_masks
        height, width = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
        if frames.shape[1:3] == (height, width):
            return frames, turns, object_masks
        frames = np.stack([np.asarray(Image.fromarray(f).resize((width, height), Image.BILINEAR)) for f in frames])
        for turn in turns:
            turn.region_masks = _resize_masks(turn.region_masks, height, width)
            turn.seg_masks = _resize_masks(turn.seg_masks, height, width)
        if object_masks is not None:
            object_masks = _resize_masks(object_masks, height, width)
        return frames, turns, object_masks


# ---- turn kinds ---------------------------------------------------------------------
def turn_kinds(record: Mapping) -> list[str]:
    """The kind of each human turn: from the record's meta when present, else inferred."""
    conversation = record["conversation"]
    humans = len(conversation[0::2])
    meta = record.get("meta")
    if isinstance(meta, dict) and isinstance(meta.get("turns"), list) and len(meta["turns"]) == humans:
        return [str(t.get("kind", "chat")) for t in meta["turns"]]
    kinds = []
    for t in range(humans):
        question = conversation[2 * t]["value"]
        answer = conversation[2 * t + 1]["value"] if 2 * t + 1 < len(conversation) else ""
        region, seg = "<mask>" in question, "[SEG]" in answer
        kinds.append("refer_ground" if region and seg else "refer" if region else "ground" if seg else "chat")
    return kinds


def _kept_turns(record: Mapping, kinds: list[str], wanted: Sequence[str] | None) -> list[int]:
    if wanted is None:
        return list(range(len(kinds)))
    meta = record.get("meta") if isinstance(record.get("meta"), dict) else {}
    links = [t.get("refers_to") for t in meta.get("turns", [])] if len(meta.get("turns", [])) == len(kinds) else [None] * len(kinds)
    kept: list[int] = []
    for t, kind in enumerate(kinds):
        earlier = links[t]
        if kind in wanted and (earlier is None or earlier in kept):
            kept.append(t)
    return kept


# ---- helpers ---------------------------------------------------------------------------
def _load_mask_sources(root: Path, masks) -> list[tuple[str | None, Mapping]]:
    if masks is None:
        return []
    if isinstance(masks, Mapping):
        return [(str(key), _read_mask_dict(root, path)) for key, path in masks.items()]
    merged: dict = {}
    for path in _as_list(masks):
        data = _read_mask_dict(root, path)
        clash = set(data) & set(merged)
        if clash:
            raise RecordError(
                f"{path}: mask id(s) {sorted(clash)[:5]} also appear in an earlier mask dict; give the dicts as "
                "{video substring: file} so each video uses its own."
            )
        merged.update(data)
    return [(None, merged)]


def _read_mask_dict(root: Path, name: str) -> dict:
    path = Path(name) if Path(name).is_absolute() else root / name
    data = read_json(path, RecordError, missing="mask dict not found. Check `root` and `masks` in the data config.",
                     expected=dict, expected_what="a mask dict, a JSON object {mask_id: [per-frame RLE or null]}")
    for key, track in data.items():
        if not isinstance(track, list):
            raise RecordError(f"{path}, mask {key}: expected a list of per-frame RLEs (or null), found {type(track).__name__}.")
    return data


def _as_list(value) -> list:
    return [value] if isinstance(value, (str, Path)) else list(value)


def _stack(masks: list[np.ndarray], empty: np.ndarray) -> np.ndarray:
    return np.stack(masks) if masks else np.zeros((0,) + empty.shape, bool)


def _resize_masks(masks: np.ndarray, height: int, width: int) -> np.ndarray:
    if masks.size == 0:
        return np.zeros(masks.shape[:2] + (height, width), bool)
    flat = masks.reshape(-1, *masks.shape[2:])
    resized = [np.asarray(Image.fromarray(m.astype(np.uint8) * 255).resize((width, height), Image.NEAREST)) > 127 for m in flat]
    return np.stack(resized).reshape(masks.shape[:2] + (height, width))
