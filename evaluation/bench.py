"""The bench runner: asks an answerer every question of a benchmark set, scores
each video, writes one JSON file per video, and merges them into a summary.

    runner = BenchRunner(BenchData(dir, suite), answerer, out_dir)
    runner.run(shard=(0, 1))       # resumable: videos with a finished result are skipped
    summary = merge(out_dir, data) # summary.json + summary.md

Output folder::

    OUT/run.json              suite, answerer and metric settings of the run
    OUT/videos/<key>.json     per video: every turn's answer and scores, and the video's metrics
    OUT/summary.json|.md      averages over videos (written by merge)

Scoring (see metrics.py for the definitions):

- sama-bench-g, per turn with `[SEG]`s: predicted tracks vs ground-truth
  volumes over all frames -> IoU matrix (predictions x ground truth),
  Hungarian one-to-one matching -> turn mIoU; recall hits need IoU >= 0.5 and
  phrase similarity >= 0.5 on the same (prediction, ground truth) pair. A turn
  answered without masks scores mIoU 0 and no hits. Per video: mean turn mIoU,
  recall = hits / ground-truth phrases, caption metrics of the answers (markup
  removed) against the reference answers, CLAIR if a judge is given.
- sama-bench-c, per object description: the question (a template, chosen with
  a seeded generator when several are given) points at the object's mask; the
  answer is scored against the description with the caption metrics and CLAIR
  per video.
- refvos, per expression (each in a fresh conversation): the union of the
  answer's tracks vs the union of the turn's ground truth, J&F over all frames;
  no mask at all scores 0 on frames where the object is visible.

The summary averages per-video metrics over videos (as the SAMA scripts do)
and also reports pooled numbers (`*_pooled`). A video whose evaluation failed
is recorded with its error, left out of the averages, listed in the summary,
and retried on the next run.
"""
from __future__ import annotations

import json
import os
import random
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from sama_agent.conversation import grounded_phrases, plain_text
from sama_agent.errors import SamaError
from sama_agent.masks import MaskTrack

from .answerers import Answer, Answerer
from .captions import CAPTION_METRICS, CaptionScorer
from .data import BenchData, BenchError, VideoUnit
from .metrics import MIOU_NORMALIZERS, grounding_scores, j_and_f
from .similarity import PhraseSimilarity

DEFAULT_CAPTION_QUESTIONS = ("Please describe the region <mask> in the video in detail.",)
RESULT_VERSION = 1


@dataclass
class BenchConfig:
    suite: str
    miou_normalizer: str = "max"
    iou_threshold: float = 0.5
    similarity_threshold: float = 0.5
    caption_questions: Sequence[str] = DEFAULT_CAPTION_QUESTIONS
    seed: int = 0
    # Appended to a Bench-G question whose reference answer has [SEG] (unless already there), as the
    # SAMA evaluation does with " Response with interleaved segmentation masks."; None leaves questions as they are.
    seg_hint: str | None = None

    def __post_init__(self):
        if self.miou_normalizer not in MIOU_NORMALIZERS:
            raise BenchError(f"unknown mIoU normalizer '{self.miou_normalizer}'; choose one of {', '.join(MIOU_NORMALIZERS)}")
        bad = [q for q in self.caption_questions if q.count("<mask>") != 1]
        if bad or not self.caption_questions:
            raise BenchError(f"caption questions need exactly one <mask> each; these do not: {bad or '(none given)'}")
        self.caption_questions = list(self.caption_questions)


@dataclass
class RunReport:
    done: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)


def parse_shard(text: str) -> tuple[int, int]:
    """'i/n' with 0 <= i < n -> (i, n)."""
    try:
        index, count = (int(part) for part in text.split("/"))
    except ValueError:
        raise BenchError(f"--shard '{text}' is not i/n; write for example 0/4 for the first of four shards") from None
    if count < 1 or not 0 <= index < count:
        raise BenchError(f"--shard {text}: need 0 <= i < n (shards are numbered from 0)")
    return index, count


class BenchRunner:
    def __init__(self, data: BenchData, answerer: Answerer, out_dir: str | Path, *, config: BenchConfig | None = None,
                 similarity: PhraseSimilarity | None = None, captions: CaptionScorer | None = None, judge=None):
        self.data = data
        self.answerer = answerer
        self.config = config or BenchConfig(data.suite)
        if self.config.suite != data.suite:
            raise BenchError(f"config is for suite {self.config.suite} but the data was loaded as {data.suite}")
        self.out_dir = Path(out_dir)
        self.similarity = similarity
        self.judge = judge
        self._captions = captions
        self._own_captions = captions is None
        if data.suite == "sama-bench-g" and similarity is None:
            raise BenchError("sama-bench-g recall needs a phrase similarity (see evaluation.similarity.default_similarity)")

    # ---- bookkeeping -------------------------------------------------------
    @property
    def videos_dir(self) -> Path:
        return self.out_dir / "videos"

    def result_path(self, unit: VideoUnit) -> Path:
        return self.videos_dir / f"{unit.key}.json"

    def run_settings(self) -> dict:
        settings = {
            "suite": self.data.suite,
            "data": str(self.data.root.resolve()),
            "answerer": getattr(self.answerer, "name", type(self.answerer).__name__),
            "config": asdict(self.config),
            "judge": getattr(self.judge, "name", None),
        }
        if self.data.suite == "sama-bench-g":
            settings["similarity"] = self.similarity.name
        return settings

    def _claim_out_dir(self) -> None:
        """Refuse to mix results of different runs in one folder."""
        self.videos_dir.mkdir(parents=True, exist_ok=True)
        settings = self.run_settings()
        path = self.out_dir / "run.json"
        if path.exists():
            previous = json.loads(path.read_text())
            if previous != settings:
                changed = sorted(k for k in settings.keys() | previous.keys() if settings.get(k) != previous.get(k))
                raise BenchError(
                    f"{self.out_dir} holds results of a different run (differs in: {', '.join(changed)}). "
                    "Use another --out folder, or delete this one to start over."
                )
        else:
            _write_json(path, settings)

    def is_finished(self, unit: VideoUnit) -> bool:
        path = self.result_path(unit)
        if not path.exists():
            return False
        try:
            return json.loads(path.read_text()).get("status") == "done"
        except json.JSONDecodeError:
            return False

    # ---- running -----------------------------------------------------------
    def run(self, shard: tuple[int, int] = (0, 1), progress=None) -> RunReport:
        index, count = shard
        self._claim_out_dir()
        report = RunReport()
        try:
            for position, unit in enumerate(self.data.units):
                if position % count != index:
                    continue
                if self.is_finished(unit):
                    report.skipped.append(unit.key)
                    continue
                result = self.evaluate_unit(unit)
                _write_json(self.result_path(unit), result)
                if result["status"] == "done":
                    report.done.append(unit.key)
                else:
                    report.failed[unit.key] = result["error"]
                if progress:
                    progress(unit, result)
        finally:
            if self._own_captions and self._captions is not None:
                self._captions.close()
                self._captions = None
        return report

    def evaluate_unit(self, unit: VideoUnit) -> dict:
        started = time.time()
        result = {"version": RESULT_VERSION, "suite": self.data.suite, "video": unit.video, "key": unit.key,
                  "records": unit.records, "status": "done"}
        try:
            evaluate = {"sama-bench-g": self._bench_g, "sama-bench-c": self._bench_c, "refvos": self._refvos}[self.data.suite]
            items, metrics = evaluate(unit)
            result["items"], result["metrics"] = items, metrics
        except Exception as exc:  # one broken video must not stop a long run; the error names where
            message = str(exc) if isinstance(exc, SamaError) else f"{exc.__class__.__name__}: {exc}"
            result.update(status="failed", error=f"video {unit.video}: {message}",
                          traceback="".join(traceback.format_exception(exc)[-3:]))
        result["elapsed_s"] = round(time.time() - started, 3)
        return result

    # ---- suites ------------------------------------------------------------
    def _bench_g(self, unit: VideoUnit):
        items, candidates, references = [], [], []
        for index in unit.records:
            record = self.data.records[index]
            video = self.data.video(index)
            self.answerer.start(video, str(index))
            for turn in range(len(record["conversation"]) // 2):
                human, reference = record["conversation"][2 * turn], record["conversation"][2 * turn + 1]
                where = f"{self.data.where(index)}, turn {turn}"
                regions = [self.data.region(m, index, f"obj_masks[{turn}][{k}]") for k, m in enumerate(record["obj_masks"][turn])]
                question = self._with_seg_hint(human["value"], reference["value"])
                answer = self._ask(question, regions, where)
                item = {"record": index, "turn": turn, "question_id": human.get("question_id"), "question": question,
                        "reference": reference["value"], "answer": answer.text, "phrases": answer.phrases}
                gt_ids = record["groundtruth"][turn]
                if gt_ids:
                    gts = [self.data.mask_volume(ids, index, f"groundtruth[{turn}][{s}]") for s, ids in enumerate(gt_ids)]
                    preds = self._volumes(answer, len(record["frames"]), record, where)
                    gt_phrases = (grounded_phrases(reference["value"]) + [""] * len(gts))[: len(gts)]
                    pred_phrases = (list(answer.phrases) + [""] * len(preds))[: len(preds)]
                    sims = self.similarity.matrix(pred_phrases, gt_phrases) if preds else np.zeros((0, len(gts)))
                    scores = grounding_scores(preds, gts, sims, normalizer=self.config.miou_normalizer,
                                              iou_threshold=self.config.iou_threshold,
                                              similarity_threshold=self.config.similarity_threshold)
                    item.update(reference_phrases=gt_phrases, grounding=scores.to_json(), similarity=np.round(sims, 4).tolist())
                candidates.append(plain_text(answer.text))
                references.append(plain_text(reference["value"]))
                items.append(item)
        grounded = [i["grounding"] for i in items if "grounding" in i]
        hits, num_gt = sum(g["hits"] for g in grounded), sum(g["num_gt"] for g in grounded)
        metrics = {
            "miou": _mean([g["miou"] for g in grounded]),
            "recall": hits / num_gt if num_gt else None,
            "hits": hits,
            "num_gt": num_gt,
            "grounded_turns": len(grounded),
            "turns": len(items),
        }
        metrics.update(self._caption_metrics(items, candidates, references))
        return items, metrics

    def _bench_c(self, unit: VideoUnit):
        items, candidates, references = [], [], []
        for index in unit.records:
            record = self.data.records[index]
            video = self.data.video(index)
            for obj, description in record["description"].items():
                where = f"{self.data.where(index)}, description.{obj}"
                mask_id = self.data.object_mask_id(record, obj, index)
                question = self._caption_question(unit.video, obj)
                self.answerer.start(video, f"{index}/{obj}")
                answer = self._ask(question, [self.data.region(mask_id, index, f"description.{obj}")], where)
                items.append({"record": index, "object": obj, "question": question, "reference": description, "answer": answer.text})
                candidates.append(plain_text(answer.text))
                references.append(plain_text(description))
        metrics = {"objects": len(items)}
        metrics.update(self._caption_metrics(items, candidates, references))
        return items, metrics

    def _refvos(self, unit: VideoUnit):
        items = []
        for index in unit.records:
            record = self.data.records[index]
            video = self.data.video(index)
            frames = len(record["frames"])
            for turn in range(len(record["conversation"]) // 2):
                where = f"{self.data.where(index)}, turn {turn}"
                expression = record["conversation"][2 * turn]["value"]
                self.answerer.start(video, f"{index}@{turn}")  # expressions are independent: a fresh conversation each
                answer = self._ask(expression, [], where)
                gt = self.data.mask_volume([m for ids in record["groundtruth"][turn] for m in ids], index, f"groundtruth[{turn}]")
                preds = self._volumes(answer, frames, record, where)
                pred = np.logical_or.reduce(preds) if preds else np.zeros_like(gt)
                scores = j_and_f(pred, gt)
                items.append({"record": index, "turn": turn, "expression": expression, "answer": answer.text,
                              "J&F": scores.mean_jf, "J": scores.mean_j, "F": scores.mean_f})
        metrics = {key: _mean([i[key] for i in items]) for key in ("J&F", "J", "F")}
        metrics["expressions"] = len(items)
        return items, metrics

    # ---- helpers -----------------------------------------------------------
    def _ask(self, question: str, regions, where: str) -> Answer:
        try:
            answer = self.answerer.ask(question, regions)
        except SamaError as exc:
            raise BenchError(f"{where}: the answerer failed: {exc}") from exc
        except Exception as exc:
            raise BenchError(f"{where}: the answerer raised {exc.__class__.__name__}: {exc}") from exc
        if not isinstance(answer, Answer):
            raise BenchError(f"{where}: the answerer returned {type(answer).__name__}, expected an Answer")
        return answer

    def _volumes(self, answer: Answer, frames: int, record: dict, where: str) -> list[np.ndarray]:
        volumes = []
        for k, track in enumerate(answer.tracks):
            if not isinstance(track, MaskTrack):
                raise BenchError(f"{where}: answer track {k} is a {type(track).__name__}, expected a MaskTrack")
            if (track.height, track.width) != (record["height"], record["width"]):
                raise BenchError(
                    f"{where}: answer track {k} ('{track.label}') is {track.width}x{track.height} but the video is "
                    f"{record['width']}x{record['height']}; predict masks at the original frame size"
                )
            outside = [f for f in track.frames if not 0 <= f < frames]
            if outside:
                raise BenchError(f"{where}: answer track {k} has masks for frames {outside[:5]} but the video has frames 0 to {frames - 1}")
            volumes.append(track.to_array(frames))
        return volumes

    def _with_seg_hint(self, question: str, reference: str) -> str:
        hint = self.config.seg_hint
        if not hint or "[SEG]" not in reference or hint.strip() in question:
            return question
        return question.rstrip() + " " + hint.strip()

    def _caption_question(self, video: str, obj: str) -> str:
        questions = self.config.caption_questions
        if len(questions) == 1:
            return questions[0]
        return random.Random(f"{self.config.seed}:{video}:{obj}").choice(questions)

    def _caption_metrics(self, items: list[dict], candidates: list[str], references: list[str]) -> dict:
        if not items:
            return {}
        if self._captions is None:
            self._captions = CaptionScorer()
        metrics = dict(self._captions.score(candidates, references))
        if self._captions.unavailable:
            metrics["unavailable"] = dict(self._captions.unavailable)
        if self.judge is not None:
            verdicts = [self.judge.score(c, r) for c, r in zip(candidates, references)]
            for item, verdict in zip(items, verdicts):
                item["clair"] = {"score": verdict.score, "reason": verdict.reason}
            metrics["CLAIR"] = _mean([v.score for v in verdicts if v.score is not None])
            metrics["clair_missing"] = sum(v.score is None for v in verdicts)
        return metrics


# ---- merging ---------------------------------------------------------------------
SUMMARY_KEYS = {
    "sama-bench-g": ("miou", "recall") + CAPTION_METRICS + ("CLAIR",),
    "sama-bench-c": CAPTION_METRICS + ("CLAIR",),
    "refvos": ("J&F", "J", "F"),
}


def merge(out_dir: str | Path, data: BenchData | None = None) -> dict:
    """Average the per-video results in `out_dir` into summary.json and summary.md."""
    out_dir = Path(out_dir)
    run_path = out_dir / "run.json"
    if not run_path.exists():
        raise BenchError(f"{out_dir}: no run.json; this is not a bench output folder (run `sama-agent bench` first)")
    settings = json.loads(run_path.read_text())
    suite = settings["suite"]
    results, failed = [], {}
    for path in sorted((out_dir / "videos").glob("*.json")):
        try:
            result = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise BenchError(f"{path}: not valid JSON ({exc.msg}); delete it and re-run to redo this video") from None
        if result.get("status") == "done":
            results.append(result)
        else:
            failed[result.get("key", path.stem)] = result.get("error", "unknown error")
    expected = [u.key for u in data.units] if data is not None else None
    finished = {r["key"] for r in results}
    missing = [k for k in expected if k not in finished and k not in failed] if expected is not None else []
    summary = {"suite": suite, "answerer": settings.get("answerer"), "settings": settings,
               "videos": {"done": len(results), "failed": len(failed), "missing": len(missing),
                          "expected": len(expected) if expected is not None else None},
               "complete": not failed and not missing and expected is not None,
               "metrics": _average(suite, results), "failed": failed, "missing": missing}
    unavailable = {}
    for result in results:
        unavailable.update(result["metrics"].get("unavailable", {}))
    summary["unavailable"] = unavailable
    _write_json(out_dir / "summary.json", summary)
    (out_dir / "summary.md").write_text(summary_table(summary))
    return summary


def _average(suite: str, results: list[dict]) -> dict:
    metrics = {}
    for key in SUMMARY_KEYS[suite]:
        metrics[key] = _mean([r["metrics"].get(key) for r in results])
    if suite == "sama-bench-g":
        hits = sum(r["metrics"]["hits"] for r in results)
        num_gt = sum(r["metrics"]["num_gt"] for r in results)
        turn_mious = [i["grounding"]["miou"] for r in results for i in r["items"] if "grounding" in i]
        metrics["recall_pooled"] = hits / num_gt if num_gt else None
        metrics["miou_pooled"] = _mean(turn_mious)
    if suite == "refvos":
        for key in ("J&F", "J", "F"):
            metrics[f"{key}_pooled"] = _mean([i[key] for r in results for i in r["items"]])
    return metrics


def summary_table(summary: dict) -> str:
    videos = summary["videos"]
    expected = videos["expected"] if videos["expected"] is not None else "?"
    lines = [
        f"# {summary['suite']} - {summary['answerer']}",
        "",
        f"videos: {videos['done']} of {expected} done, {videos['failed']} failed, {videos['missing']} missing"
        + ("" if summary["complete"] else "  (INCOMPLETE: averages cover finished videos only)"),
        "",
        "| metric | value |",
        "|---|---|",
    ]
    for key, value in summary["metrics"].items():
        if value is None:
            reason = summary.get("unavailable", {}).get(key) or ("no judge given" if key == "CLAIR" else "no data")
            shown = f"unavailable ({reason})"
        else:
            shown = f"{value:.4f}"
        lines.append(f"| {key} | {shown} |")
    for key, error in summary["failed"].items():
        lines.append(f"\nfailed {key}: {error}")
    return "\n".join(lines) + "\n"


def _mean(values) -> float | None:
    values = [float(v) for v in values if v is not None]
    return sum(values) / len(values) if values else None


def _write_json(path: Path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=1, default=_json_default))
    os.replace(tmp, path)


def _json_default(value):
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"cannot store {type(value).__name__} in a result file")
