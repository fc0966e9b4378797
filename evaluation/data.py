"""Benchmark data on disk: SAMA-Bench-G / -C and Ref-VOS sets in the SAMA-239K
record format (DESIGN section 5).

Layout of a data directory (`--data DIR`)::

    DIR/records.json    a JSON list of records
    DIR/masks.json      the mask dict {mask_id: [per-frame COCO RLE or null]}
    DIR/<record.video>/<frame stem>.jpg|.png   frame folders, relative to DIR

(or NAME.json + NAME_masks.json, as the world generator writes a split).

Suites read different parts of a record:

- sama-bench-g: `conversation`, `obj_masks` (one mask id per `<mask>` in a
  question: the region the user points at) and `groundtruth` (per `[SEG]` in
  the answer, mask ids that are unioned). Grounded phrases in answers are
  written `<p>phrase</p> [SEG]`.
- sama-bench-c: `description` ({"objN": text}) and `anno_map` (objN -> mask
  id at index N); a `conversation` is optional.
- refvos: referring-expression grounding without any prompt on a frame. Each
  human turn is an expression or a request ("Please segment the dog that
  jumps.") with no `<mask>`; its answer holds at least one `[SEG]` and
  `groundtruth` gives the mask ids; the union of a turn's ground truth is the
  target object, scored with J&F over every frame.

Every record is checked on load (`sama_agent.schemas`); a bad file or record
raises `BenchError` naming the file, the record and the field.
"""
from __future__ import annotations

import copy
import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import jsonschema
import numpy as np

from sama_agent.errors import RecordError, SamaError
from sama_agent.jsonfile import read_json
from sama_agent.masks import MaskTrack, decode_rle
from sama_agent.regions import Region
from sama_agent.schemas import RECORD_SCHEMA, validate_mask_dict, validate_record
from sama_agent.video import Video

SUITES = ("sama-bench-g", "sama-bench-c", "refvos")
RECORDS_FILE = "records.json"
MASKS_FILE = "masks.json"
OBJECT_KEY = re.compile(r"^obj(\d+)$")


class BenchError(SamaError):
    """Benchmark data or predictions are unusable; the message names file, record and field."""


_BENCH_C_SCHEMA = copy.deepcopy(RECORD_SCHEMA)
_BENCH_C_SCHEMA["required"] = ["video", "frames", "height", "width", "anno_map", "description"]
_BENCH_C_VALIDATOR = jsonschema.Draft202012Validator(_BENCH_C_SCHEMA)


@dataclass
class VideoUnit:
    """All records about one video: the unit of work that is resumed and sharded."""

    video: str  # the records' `video` field
    key: str  # a file-name-safe, collision-free id used for the result file
    records: list[int] = field(default_factory=list)  # indices into BenchData.records


class BenchData:
    """A benchmark set: validated records, the mask dict, and the frame folders."""

    def __init__(self, root: str | Path, suite: str, *, records_file: str = RECORDS_FILE, masks_file: str = MASKS_FILE):
        if suite not in SUITES:
            raise BenchError(f"unknown suite '{suite}'; choose one of {', '.join(SUITES)}")
        self.root = Path(root)
        self.suite = suite
        if not self.root.is_dir():
            raise BenchError(f"{self.root}: no such data directory. Point --data at a folder holding {records_file} and {masks_file}.")
        self.records_path = self.root / records_file
        self.masks_path = self.root / masks_file
        self.records: list[dict] = _load_json(self.records_path, list, "a JSON list of records")
        self.masks: dict = _load_json(self.masks_path, dict, "a JSON object {mask_id: [per-frame RLE or null]}")
        try:
            validate_mask_dict(self.masks, file=str(self.masks_path))
        except RecordError as exc:
            raise BenchError(str(exc)) from None
        if not self.records:
            raise BenchError(f"{self.records_path}: holds no records.")
        for index, record in enumerate(self.records):
            self._validate(record, index)
        self.units = _group_by_video(self.records)

    # ---- validation --------------------------------------------------------
    def where(self, index: int) -> str:
        return f"{self.records_path}, record {index}"

    def _validate(self, record, index: int) -> None:
        try:
            if self.suite == "sama-bench-c":
                self._validate_bench_c(record, index)
            else:
                validate_record(record, file=str(self.records_path), index=index, masks=self.masks)
                self._validate_grounding(record, index)
        except RecordError as exc:
            raise BenchError(str(exc)) from None

    def _validate_grounding(self, record: dict, index: int) -> None:
        where = self.where(index)
        if "groundtruth" not in record:
            raise BenchError(f"{where}, field groundtruth: missing; {self.suite} needs the ground-truth mask ids of every [SEG]")
        if self.suite == "sama-bench-g" and "obj_masks" not in record:
            raise BenchError(f"{where}, field obj_masks: missing; sama-bench-g needs the mask id of every <mask> in a question")
        humans = record["conversation"][0::2]
        if len(record["conversation"]) % 2:
            raise BenchError(f"{where}, field conversation: ends with a human turn that has no answer")
        for turn, human in enumerate(humans):
            if self.suite == "refvos":
                if "<mask>" in human["value"]:
                    raise BenchError(
                        f"{where}, field conversation[{2 * turn}]: refvos expressions take no region prompt, found <mask>"
                    )
                if not record["groundtruth"][turn]:
                    raise BenchError(f"{where}, field groundtruth[{turn}]: a refvos turn needs at least one [SEG] with ground truth")
            for seg, ids in enumerate(record["groundtruth"][turn]):
                if not [m for m in ids if str(m) != "-1"]:
                    raise BenchError(
                        f"{where}, field groundtruth[{turn}][{seg}]: no mask id for this [SEG]; every grounded phrase needs its mask"
                    )
            for slot, mask_id in enumerate(record.get("obj_masks", [[]] * len(humans))[turn]):
                if str(mask_id) == "-1":
                    raise BenchError(f"{where}, field obj_masks[{turn}][{slot}]: mask id -1, but the question points at a region here")

    def _validate_bench_c(self, record, index: int) -> None:
        where = self.where(index)
        errors = sorted(_BENCH_C_VALIDATOR.iter_errors(record), key=lambda e: list(e.absolute_path))
        if errors:
            path = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in errors[0].absolute_path).lstrip(".")
            raise BenchError(f"{where}, field {path or '(record)'}: {errors[0].message}")
        if "conversation" in record:
            validate_record(record, file=str(self.records_path), index=index)
        if not record["description"]:
            raise BenchError(f"{where}, field description: empty; sama-bench-c needs at least one object description")
        for key in record["description"]:
            self.object_mask_id(record, key, index)

    # ---- access ------------------------------------------------------------
    def object_mask_id(self, record: dict, key: str, index: int) -> str:
        """The mask id of description key `objN` (anno_map[N])."""
        where = self.where(index)
        match = OBJECT_KEY.match(key)
        if not match:
            raise BenchError(f"{where}, field description.{key}: keys must be objN, N indexing anno_map")
        number = int(match.group(1))
        anno_map = record["anno_map"]
        if number >= len(anno_map) or str(anno_map[number]) == "-1":
            raise BenchError(f"{where}, field description.{key}: anno_map has no mask for object {number}")
        mask_id = str(anno_map[number])
        if mask_id not in self.masks:
            raise BenchError(f"{where}, field anno_map[{number}]: mask id {mask_id} is not in {self.masks_path}")
        if len(self.masks[mask_id]) != len(record["frames"]):
            raise BenchError(
                f"{where}, field anno_map[{number}]: mask {mask_id} has {len(self.masks[mask_id])} frames, the record has {len(record['frames'])}"
            )
        return mask_id

    def video(self, index: int) -> Video:
        record = self.records[index]
        path = self.root / record["video"]
        try:
            video = Video(path, frames=record["frames"])
        except SamaError as exc:
            raise BenchError(f"{self.where(index)}, field video: {exc}") from None
        if (video.height, video.width) != (record["height"], record["width"]):
            raise BenchError(
                f"{self.where(index)}, field height/width: the record says {record['width']}x{record['height']} "
                f"but the frames in {path} are {video.width}x{video.height}"
            )
        return video

    def mask_volume(self, mask_ids: Iterable, index: int, what: str) -> np.ndarray:
        """Union of the given masks over the record's frames, (T, H, W) bool; -1 ids are skipped."""
        record = self.records[index]
        shape = (record["height"], record["width"])
        volume = np.zeros((len(record["frames"]),) + shape, bool)
        for mask_id in mask_ids:
            if str(mask_id) == "-1":
                continue
            for frame, rle in enumerate(self.masks[str(mask_id)]):
                if rle is None:
                    continue
                if tuple(rle["size"]) != shape:
                    raise BenchError(
                        f"{self.masks_path}, mask {mask_id}, frame {frame} (used by {self.where(index)}, {what}): "
                        f"RLE size {rle['size']} differs from the record's {record['height']}x{record['width']}"
                    )
                volume[frame] |= decode_rle(rle)
        return volume

    def region(self, mask_id, index: int, what: str) -> Region:
        """The region a `<mask>` points at: its mask on the frame where it is largest.

        The whole track rides along in `Region.track`, as a SAMA-239K `<mask>` is a
        masklet over every frame where the object is visible.
        """
        volume = self.mask_volume([mask_id], index, what)
        areas = volume.reshape(len(volume), -1).sum(axis=1)
        if areas.max() == 0:
            raise BenchError(f"{self.where(index)}, {what}: mask {mask_id} is empty on every frame; the region cannot be shown")
        frame = int(areas.argmax())
        track = MaskTrack.from_masks({t: volume[t] for t in range(len(volume)) if areas[t] > 0}, label=f"mask {mask_id}")
        return Region(frame=frame, mask=volume[frame], mask_ref=f"bench:{mask_id}", track=track, meta={"mask_id": str(mask_id)})


def _load_json(path: Path, kind: type, description: str):
    missing = f"missing. A benchmark folder holds {RECORDS_FILE} (records) and {MASKS_FILE} (mask dict)."
    return read_json(path, BenchError, missing=missing, expected=kind, expected_what=description)


def _group_by_video(records: list[dict]) -> list[VideoUnit]:
    units: dict[str, VideoUnit] = {}
    for index, record in enumerate(records):
        video = record["video"]
        if video not in units:
            units[video] = VideoUnit(video, unit_key(video))
        units[video].records.append(index)
    return sorted(units.values(), key=lambda u: u.key)


def unit_key(video: str) -> str:
    """A readable file stem for a video path, made unique by a short hash."""
    readable = re.sub(r"[^A-Za-z0-9._-]+", "_", video.strip("/"))[-80:].strip("._") or "video"
    return f"{readable}-{hashlib.sha1(video.encode()).hexdigest()[:8]}"
