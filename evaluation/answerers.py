"""What the bench runner asks: an *answerer* holds a conversation about one
video and answers each question with text, grounded phrases and mask tracks.

    answerer.start(video, conversation_id)      # new conversation on this video
    answerer.ask(question, regions) -> Answer   # question with one <mask> per region

`Answer.tracks[i]` is the mask track of `Answer.phrases[i]` over the video's
frames (frames a track does not cover count as empty). The runner depends
only on this interface, so it runs before, and independently of, any model.

Implementations:
- `PredictorAnswerer` adapts the SAMA model's `SamaPredictor`
  (`set_video(video)`, `ask(question, regions) -> TurnResult`).
- `load_model_answerer(model_dir, segmenter)` builds one from a checkpoint
  exactly as `sama-agent chat` does (`sama_agent.session.load_model` +
  `predictor_for`: parts and segmenter from the plugin registry).
- `GroundTruthReplayAnswerer` answers with the ground truth itself, optionally
  corrupted per turn. It is an oracle for checking data sets and metric
  plumbing (perfect answers must score 1), not a model.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Protocol, Sequence, runtime_checkable

from sama_agent.conversation import grounded_phrases
from sama_agent.errors import SamaError
from sama_agent.masks import MaskTrack
from sama_agent.regions import Region
from sama_agent.video import Video


@dataclass
class Answer:
    text: str
    phrases: list[str] = field(default_factory=list)
    tracks: list[MaskTrack] = field(default_factory=list)


@runtime_checkable
class Answerer(Protocol):
    name: str

    def start(self, video: Video, conversation_id: str) -> None:
        """Begin a new conversation about `video` (earlier turns are forgotten)."""

    def ask(self, question: str, regions: Sequence[Region]) -> Answer:
        """Answer one turn; `question` holds one `<mask>` per region."""


class PredictorAnswerer:
    """The SAMA model's predictor behind the answerer interface.

    Give either one `predictor`, or a `factory` that makes a fresh one; with a
    factory each video gets its own predictor, so per-session state (the SAM2
    feature cache chat uses) lives for one video and is then dropped.
    """

    def __init__(self, predictor=None, *, factory=None, name: str = "sama"):
        if (predictor is None) == (factory is None):
            raise TypeError("give a predictor or a factory, not both or neither")
        self.factory = factory
        self.predictor = predictor if predictor is not None else factory()
        for method in ("set_video", "ask"):
            if not callable(getattr(self.predictor, method, None)):
                raise TypeError(f"{type(self.predictor).__name__} has no {method}(); expected a SamaPredictor")
        self.name = name
        self._encoded: tuple | None = None  # the video currently encoded, so its conversations reuse the encoding

    def start(self, video: Video, conversation_id: str) -> None:
        identity = (str(video.path), video.num_frames, video.height, video.width)
        reset = getattr(self.predictor, "reset", None)
        if identity == self._encoded and callable(reset):
            reset()
            return
        if self.factory is not None and self._encoded is not None:
            self.predictor = self.factory()
        self.predictor.set_video(video)  # encodes the video and starts a new conversation
        self._encoded = identity

    def ask(self, question: str, regions: Sequence[Region]) -> Answer:
        result = self.predictor.ask(question, list(regions))
        text = getattr(result, "raw", None) or result.text  # keep the <p>phrase</p> [SEG] markup
        phrases = list(getattr(result, "phrases", None) or grounded_phrases(text))
        return Answer(text, phrases, list(result.tracks))


def load_model_answerer(model_dir: str | Path | None = None, segmenter: str | None = None) -> PredictorAnswerer:
    """The model the way `sama-agent chat` loads it: the checkpoint folder (None = the default
    checkpoint), parts and segmenter from the plugin registry, one predictor per video."""
    try:
        from sama_agent.session import load_model, predictor_for
    except ImportError as exc:
        raise SamaError(f"the SAMA model is not available in this installation ({exc}); benchmark another answerer") from None

    model = load_model(model_dir)
    name = (Path(model_dir).name if model_dir is not None else "default") + (f"+{segmenter}" if segmenter else "")
    return PredictorAnswerer(factory=lambda: predictor_for(model, segmenter), name=name)


# ---- oracle ------------------------------------------------------------------------
Corruption = Callable[[str, int, Answer], Answer]


class GroundTruthReplayAnswerer:
    """Replays the ground-truth answers of a `BenchData` set; `corrupt(conversation, turn, answer)` may alter them
    (`conversation` is the id without any "@turn").

    Conversation ids are the runner's: "<record index>" for grounded chat,
    "<record index>/<objN>" for region captions, "<record index>@<turn>" for
    Ref-VOS (one conversation per expression).
    """

    name = "ground-truth-replay"

    def __init__(self, data, corrupt: Corruption | None = None):
        self.data = data
        self.corrupt = corrupt
        self._conversation: str | None = None
        self._turn = 0

    def start(self, video: Video, conversation_id: str) -> None:
        conversation, _, first_turn = conversation_id.partition("@")
        self._conversation, self._turn = conversation, int(first_turn or 0)

    def ask(self, question: str, regions: Sequence[Region]) -> Answer:
        if self._conversation is None:
            raise RuntimeError("call start() before ask()")
        index, _, obj = self._conversation.partition("/")
        index, turn = int(index), self._turn
        record = self.data.records[index]
        if obj:
            mask_id = self.data.object_mask_id(record, obj, index)
            answer = Answer(record["description"][obj], [], [])
            answer.tracks = [_track(self.data.mask_volume([mask_id], index, obj), obj)]
        else:
            text = record["conversation"][2 * turn + 1]["value"]
            volumes = [self.data.mask_volume(ids, index, f"groundtruth[{turn}][{s}]") for s, ids in enumerate(record["groundtruth"][turn])]
            phrases = (grounded_phrases(text) + [""] * len(volumes))[: len(volumes)]
            answer = Answer(text, phrases, [_track(v, p) for v, p in zip(volumes, phrases)])
        self._turn += 1
        return self.corrupt(self._conversation, turn, answer) if self.corrupt else answer


def _track(volume, label: str) -> MaskTrack:
    track = MaskTrack(volume.shape[1], volume.shape[2], {}, label)
    for frame, mask in enumerate(volume):
        track.set(frame, mask)
    return track

