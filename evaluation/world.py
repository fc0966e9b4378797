"""The synthetic world's bars (issue 5), measured on a generated split.

    evaluation = WorldEvaluation(BenchData(dir, "sama-bench-g", records_file="heldout.json",
                                           masks_file="heldout_masks.json"), answerer)
    results = evaluation.run()              # one dict per record, every turn answered and scored
    summary = summarize(results)            # the three headline numbers + per-kind counts

or `sama-agent bench --suite world --data DIR --split heldout --model CKPT [--limit N]`.

Each record is one conversation, asked in order through the answerer with its
real history: the answerer keeps its own earlier answers in context, as chat
does. A `<mask>` in a question is given as the object's mask on one frame
(`region_frame`: "largest" = where it shows most pixels, as the bench runner
does, or "first" = where it first shows), with the whole track in
`Region.track` (a SAMA-239K `<mask>` is a masklet over the video).

Scores (kinds from `meta.turns[t].kind`, see training/world/language.py):

- grounding: DAVIS J&F over every frame of the video, per `[SEG]` of the
  reference answer: answer track k vs the union of `groundtruth[t][k]`; a
  `[SEG]` the answer lacks scores 0. The headline is the mean over the
  `ground` turns ("Please segment the ..."); other turns with ground truth
  (ground_multi, followup_segment, refer_ground, refer_two, describe) get their
  J&F reported per kind.
- referring: `check_answer` (training/world/scoring.py) on refer / identify /
  refer_ground turns: the answer names the right colour, shape and motion.
- multi-turn: `check_answer` on follow-up turns that refer back to an earlier
  turn (`refers_to` set).
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from sama_agent.masks import MaskTrack
from sama_agent.regions import Region
from sama_agent.training.world.scoring import FOLLOWUPS, GROUNDING, REFERRING, check_answer

from .answerers import Answer, Answerer
from .bench import _mean, _write_json
from .data import BenchData, BenchError
from .metrics import j_and_f

REGION_FRAMES = ("largest", "first")
RESULT_VERSION = 1
BARS = {"grounding_jf": 0.80, "referring_accuracy": 0.90, "multiturn_accuracy": 0.85}


@dataclass
class WorldConfig:
    limit: int | None = None  # the first N records of the split (None: all)
    region_frame: str = "largest"

    def __post_init__(self):
        if self.region_frame not in REGION_FRAMES:
            raise BenchError(f"unknown region frame '{self.region_frame}'; choose one of {', '.join(REGION_FRAMES)}")
        if self.limit is not None and self.limit < 1:
            raise BenchError(f"--limit {self.limit}: give a positive number of records (or leave it out for all)")


def load_world(data_dir: str | Path, split: str) -> BenchData:
    """A world split (`<split>.json`, `<split>_masks.json`, frame folders), validated as grounded chat."""
    data = BenchData(data_dir, "sama-bench-g", records_file=f"{split}.json", masks_file=f"{split}_masks.json")
    missing = [i for i, r in enumerate(data.records) if not (r.get("meta") or {}).get("turns")]
    if missing:
        raise BenchError(f"{data.records_path}, record {missing[0]}: no meta.turns; this is not world generator output "
                         "(the world scores need each turn's kind and expected facts)")
    return data


class WorldEvaluation:
    def __init__(self, data: BenchData, answerer: Answerer, config: WorldConfig | None = None):
        self.data = data
        self.answerer = answerer
        self.config = config or WorldConfig()

    @property
    def indices(self) -> list[int]:
        count = len(self.data.records)
        return list(range(min(count, self.config.limit or count)))

    def run(self, progress: Callable[[dict], None] | None = None, done: dict[int, dict] | None = None) -> list[dict]:
        """Every selected record, in order; `done` maps record index -> an earlier finished result to keep."""
        results = []
        for index in self.indices:
            if index in (done or {}):
                results.append(done[index])
                continue
            result = self.evaluate_record(index)
            results.append(result)
            if progress:
                progress(result)
        return results

    def evaluate_record(self, index: int) -> dict:
        record = self.data.records[index]
        started = time.time()
        self.answerer.start(self.data.video(index), str(index))
        frames = len(record["frames"])
        items = []
        for turn, meta in enumerate(record["meta"]["turns"]):
            human, reference = record["conversation"][2 * turn], record["conversation"][2 * turn + 1]
            where = f"{self.data.where(index)}, turn {turn}"
            regions = [self.region(m, index, f"obj_masks[{turn}][{k}]") for k, m in enumerate(record["obj_masks"][turn])]
            answer = self._ask(human["value"], regions, where)
            item = {"turn": turn, "kind": meta["kind"], "refers_to": meta.get("refers_to"), "question_id": human.get("question_id"),
                    "question": human["value"], "reference": reference["value"], "answer": answer.text}
            if record["groundtruth"][turn]:
                item.update(self._grounding(answer, record, index, turn, frames, where))
            verdict = check_answer(answer.text, meta) if meta.get("expect") else None
            if verdict is not None:
                item["verdict"] = asdict(verdict)
                item["correct"] = bool(verdict.correct)
            items.append(item)
        return {"version": RESULT_VERSION, "index": index, "video": record["video"], "items": items,
                "elapsed_s": round(time.time() - started, 3)}

    # ---- pieces --------------------------------------------------------------
    def region(self, mask_id, index: int, what: str) -> Region:
        if self.config.region_frame == "largest":
            return self.data.region(mask_id, index, what)
        volume = self.data.mask_volume([mask_id], index, what)
        shown = np.nonzero(volume.reshape(len(volume), -1).any(axis=1))[0]
        if not len(shown):
            raise BenchError(f"{self.data.where(index)}, {what}: mask {mask_id} is empty on every frame; the region cannot be shown")
        track = MaskTrack.from_masks({int(t): volume[t] for t in shown}, label=f"mask {mask_id}")
        frame = int(shown[0])
        return Region(frame=frame, mask=volume[frame], mask_ref=f"world:{mask_id}", track=track, meta={"mask_id": str(mask_id)})

    def _ask(self, question: str, regions, where: str) -> Answer:
        try:
            answer = self.answerer.ask(question, regions)
        except Exception as exc:
            raise BenchError(f"{where}: the answerer raised {exc.__class__.__name__}: {exc}") from exc
        if not isinstance(answer, Answer):
            raise BenchError(f"{where}: the answerer returned {type(answer).__name__}, expected an Answer")
        return answer

    def _grounding(self, answer: Answer, record: dict, index: int, turn: int, frames: int, where: str) -> dict:
        """J&F per reference [SEG]: answer track k vs ground truth k; a missing track scores 0."""
        scores = []
        for k, ids in enumerate(record["groundtruth"][turn]):
            if k >= len(answer.tracks):
                scores.append({"J&F": 0.0, "J": 0.0, "F": 0.0, "missing": True})
                continue
            gt = self.data.mask_volume(ids, index, f"groundtruth[{turn}][{k}]")
            jf = j_and_f(self._volume(answer.tracks[k], k, frames, record, where), gt)
            scores.append({"J&F": float(jf.mean_jf), "J": float(jf.mean_j), "F": float(jf.mean_f), "missing": False})
        return {"segs": scores, "J&F": _mean([s["J&F"] for s in scores]),
                "extra_segs": max(0, len(answer.tracks) - len(scores))}

    @staticmethod
    def _volume(track, k: int, frames: int, record: dict, where: str) -> np.ndarray:
        if not isinstance(track, MaskTrack):
            raise BenchError(f"{where}: answer track {k} is a {type(track).__name__}, expected a MaskTrack")
        if (track.height, track.width) != (record["height"], record["width"]):
            raise BenchError(f"{where}: answer track {k} is {track.width}x{track.height} but the video is "
                             f"{record['width']}x{record['height']}; predict masks at the original frame size")
        outside = [f for f in track.frames if not 0 <= f < frames]
        if outside:
            raise BenchError(f"{where}: answer track {k} has masks for frames {outside[:5]} but the video has frames 0 to {frames - 1}")
        return track.to_array(frames)


# ---- summary -----------------------------------------------------------------
def summarize(results: list[dict]) -> dict:
    """The three bars, their counts, and per-kind numbers, pooled over turns."""
    items = [i for r in results for i in r["items"]]
    grounding = [i["J&F"] for i in items if i["kind"] in GROUNDING and "J&F" in i]
    referring = [i["correct"] for i in items if i["kind"] in REFERRING and "correct" in i]
    multiturn = [i["correct"] for i in items if i["kind"] in FOLLOWUPS and i.get("refers_to") is not None and "correct" in i]
    per_kind = {}
    for kind in sorted({i["kind"] for i in items}):
        mine = [i for i in items if i["kind"] == kind]
        scored = [i["correct"] for i in mine if "correct" in i]
        jfs = [i["J&F"] for i in mine if "J&F" in i]
        per_kind[kind] = {"turns": len(mine), "scored": len(scored), "correct": sum(scored),
                          "accuracy": _mean(scored), "grounded": len(jfs), "J&F": _mean(jfs),
                          "missing_segs": sum(s["missing"] for i in mine for s in i.get("segs", []))}
    metrics = {"grounding_jf": _mean(grounding), "referring_accuracy": _mean(referring), "multiturn_accuracy": _mean(multiturn)}
    counts = {"records": len(results), "turns": len(items), "grounding_turns": len(grounding),
              "referring_turns": len(referring), "multiturn_turns": len(multiturn)}
    passed = {k: (v is not None and v >= BARS[k]) for k, v in metrics.items()}
    return {"metrics": metrics, "bars": BARS, "passed": passed, "counts": counts, "per_kind": per_kind}


def summary_table(summary: dict, title: str = "world") -> str:
    lines = [f"# {title}", "", "| bar | value | turns | target | met |", "|---|---|---|---|---|"]
    counts = summary["counts"]
    for key, turns in (("grounding_jf", "grounding_turns"), ("referring_accuracy", "referring_turns"), ("multiturn_accuracy", "multiturn_turns")):
        value = summary["metrics"][key]
        shown = "n/a (no turns)" if value is None else f"{value:.4f}"
        lines.append(f"| {key} | {shown} | {counts[turns]} | >= {BARS[key]:.2f} | {'yes' if summary['passed'][key] else 'no'} |")
    lines += ["", f"records: {counts['records']}, turns: {counts['turns']}", "",
              "| kind | turns | scored | accuracy | grounded | J&F | missing [SEG] |", "|---|---|---|---|---|---|---|"]
    fmt = lambda v: "-" if v is None else f"{v:.4f}"  # noqa: E731
    for kind, row in summary["per_kind"].items():
        lines.append(f"| {kind} | {row['turns']} | {row['scored']} | {fmt(row['accuracy'])} | {row['grounded']} | {fmt(row['J&F'])} | {row['missing_segs']} |")
    return "\n".join(lines) + "\n"


# ---- a resumable run into a folder ---------------------------------------------
def run_world(data: BenchData, answerer: Answerer, out_dir: str | Path, config: WorldConfig | None = None,
              progress: Callable[[dict], None] | None = None) -> dict:
    """Evaluate into `out_dir`: records/<index>.json as they finish (a re-run skips them),
    then summary.json (settings, summary, every record) and summary.md."""
    config = config or WorldConfig()
    out_dir = Path(out_dir)
    settings = {"suite": "world", "data": str(data.root.resolve()), "records_file": data.records_path.name,
                "answerer": getattr(answerer, "name", type(answerer).__name__), "region_frame": config.region_frame}
    _claim(out_dir, settings)
    done = {}
    for path in (out_dir / "records").glob("*.json"):
        try:
            result = json.loads(path.read_text())
        except json.JSONDecodeError:
            continue
        if result.get("version") == RESULT_VERSION:
            done[result["index"]] = result

    def keep(result: dict) -> None:
        _write_json(out_dir / "records" / f"{result['index']:06d}.json", result)
        if progress:
            progress(result)

    results = WorldEvaluation(data, answerer, config).run(keep, done)
    summary = summarize(results)
    _write_json(out_dir / "summary.json", {"settings": {**settings, "limit": config.limit}, "summary": summary, "records": results})
    (out_dir / "summary.md").write_text(summary_table(summary, f"world {data.records_path.stem} - {settings['answerer']}"))
    return summary


def _claim(out_dir: Path, settings: dict) -> None:
    path = out_dir / "run.json"
    if path.exists():
        previous = json.loads(path.read_text())
        if previous != settings:
            changed = sorted(k for k in settings.keys() | previous.keys() if settings.get(k) != previous.get(k))
            raise BenchError(f"{out_dir} holds results of a different run (differs in: {', '.join(changed)}). "
                             "Use another --out folder, or delete this one to start over.")
    else:
        (out_dir / "records").mkdir(parents=True, exist_ok=True)
        _write_json(path, settings)
