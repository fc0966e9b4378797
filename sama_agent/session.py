"""A chat session about one video: the object the CLI, the Python API and the
LangChain tools share.

    session = Session.open("clip.mp4")                  # decodes and encodes the video once
    answer = session.ask("segment the red disc")
    answer.phrases[0].handle                            # 'mask-…', persisted in the MaskStore
    session.ask(f"what is {answer.region(0)} doing?")   # ask about what turn 1 found

Regions in questions use the shared syntax of `sama_agent.regions`; a `mask=`
handle resolves through the session's MaskStore, so masks from earlier turns
(or an earlier process using the same store) can be pointed at.

The model side is an *answerer*: `set_video(video)` once, then
`ask(question_text, regions) -> TurnResult(text, raw, phrases, tracks)` per turn,
keeping the conversation. `SamaPredictor` is the built-in one.
"""
from __future__ import annotations

import json
import re
import secrets
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, Sequence, runtime_checkable

from .conversation import PHRASE_PATTERN, SEG_TOKEN
from .errors import CheckpointError, RegionError, SamaError
from .feature_cache import CachedEncoding
from .masks import MaskHandle, MaskStore, MaskTrack
from .regions import Region, parse_question
from .video import Video

SESSION_FILE = "session.json"
SESSION_ID_PATTERN = re.compile(r"^session-[0-9a-f]{8}$")


@runtime_checkable
class Answerer(Protocol):
    """What a session needs from the model side (SamaPredictor is one)."""

    def set_video(self, video: Video) -> None:
        """Decode and encode the video once; later asks reuse it."""

    def ask(self, question_text: str, regions: list[Region]) -> Any:
        """One turn. `question_text` has one `<mask>` per region. Returns an object with
        `text`, `raw`, `phrases: list[str]`, `tracks: list[MaskTrack]` (one per [SEG])."""

    def reset(self) -> None:
        """Forget the conversation, keep the encoded video."""


# ---- answers ------------------------------------------------------------------------
@dataclass(frozen=True)
class GroundedPhrase:
    """A noun phrase of an answer and the handle of its mask track."""

    phrase: str
    handle: MaskHandle
    frames_present: tuple[int, ...] = ()

    def region(self, frame: int | None = None) -> str:
        """Region prompt text pointing at this mask, on `frame` or its first visible frame."""
        return region_text(self.handle, frame if frame is not None else _first(self.frames_present, self.handle))


@dataclass
class GroundedAnswer:
    """One answered turn.

    text: the answer without markup; raw: the model's output with `<p>…</p> [SEG]`;
    phrases: one per [SEG], in order, each with its mask handle; handles: the same handles;
    turn: 1-based turn index in the session; question: as the user wrote it.
    """

    text: str
    phrases: list[GroundedPhrase]
    handles: list[MaskHandle]
    turn: int
    raw: str
    question: str = ""
    session_id: str = ""
    key_frames: list[int] = field(default_factory=list)
    seconds: float = 0.0

    def annotated(self) -> str:
        """The answer with each grounded phrase followed by its handle: `the red disc [mask-…] moves`."""
        return annotate(self.raw, self.handles)

    def region(self, index: int = 0, frame: int | None = None) -> str:
        """Region prompt text for the `index`-th grounded phrase."""
        if not 0 <= index < len(self.phrases):
            raise RegionError(f"turn {self.turn} grounded {len(self.phrases)} phrase(s); there is no phrase {index}.")
        return self.phrases[index].region(frame)

    def to_json(self) -> dict:
        return {
            "session_id": self.session_id,
            "turn": self.turn,
            "question": self.question,
            "text": self.text,
            "annotated": self.annotated(),
            "raw": self.raw,
            "phrases": [
                {"phrase": p.phrase, "handle": str(p.handle), "frames_present": list(p.frames_present)} for p in self.phrases
            ],
            "handles": [str(h) for h in self.handles],
            "key_frames": list(self.key_frames),
            "seconds": round(self.seconds, 3),
        }


def region_text(handle: str, frame: int) -> str:
    """`<region frame=F mask=HANDLE>`: the prompt that points at a stored mask on one frame."""
    return f"<region frame={int(frame)} mask={MaskHandle(handle)}>"


def annotate(raw: str, handles: Sequence[str]) -> str:
    """Replace each `<p>phrase</p> [SEG]` (or bare [SEG]) by `phrase [handle]`, in order."""
    queue = list(handles)

    def tag() -> str:
        return f"[{queue.pop(0)}]" if queue else "[no mask]"

    marked = re.sub(PHRASE_PATTERN, lambda m: f"{m.group(1).strip()} \x00", raw)
    marked = marked.replace(SEG_TOKEN, "\x00")
    pieces = marked.split("\x00")
    text = pieces[0] + "".join(tag() + piece for piece in pieces[1:])
    return re.sub(r"\s+", " ", text.replace("<p>", "").replace("</p>", "")).strip()


def _first(frames: Sequence[int], handle: str) -> int:
    if not frames:
        raise RegionError(f"mask {handle} is empty on every frame, so it cannot be used as a region.")
    return int(frames[0])


# ---- the session --------------------------------------------------------------------
class Session:
    """One video, one conversation, one mask store. Thread-safe per session (asks run one at a time)."""

    def __init__(self, video: Video, answerer: Answerer, store: MaskStore, session_dir: Path, session_id: str | None = None):
        self.video = video
        self.answerer = answerer
        self.store = store
        self.session_dir = Path(session_dir)
        self.session_dir.mkdir(parents=True, exist_ok=True)
        self.id = session_id or new_session_id()
        self.history: list[GroundedAnswer] = []
        self.encode_seconds = 0.0
        self._lock = threading.Lock()

    # ---- opening ------------------------------------------------------------------
    @classmethod
    def open(
        cls,
        video: str | Path | Video,
        model: Any = None,
        segmenter: str | None = None,
        session_dir: str | Path | None = None,
        store: MaskStore | None = None,
        *,
        model_overrides: dict | None = None,
        progress: bool = True,
        session_id: str | None = None,
    ) -> "Session":
        """Open a video and encode it once.

        model: None (the shipped default), a checkpoint folder, a loaded SamaModel, or an
        answerer (anything with set_video/ask/reset). segmenter: a registered segmenter
        name replacing the model's own. session_dir: where session.json and (without
        `store`) the masks go; a fresh folder under `sessions_root()` by default.
        """
        clip = video if isinstance(video, Video) else Video(video)
        session_id = session_id or new_session_id()
        if session_dir is None:
            from .defaults import sessions_root

            session_dir = sessions_root() / session_id
        session_dir = Path(session_dir)
        store = store if store is not None else MaskStore(session_dir)
        answerer = build_answerer(model, segmenter=segmenter, overrides=model_overrides)
        session = cls(clip, answerer, store, session_dir, session_id)
        session._encode(progress)
        return session

    def _encode(self, progress: bool) -> None:
        """Decode and encode the video once: the model's context frames, then (when the
        segmenter keeps a feature cache) every frame's segmenter features."""
        from tqdm.auto import tqdm

        started = time.perf_counter()
        cache = feature_cache_of(self.answerer)
        total = self.video.num_frames * (2 if cache is not None else 1)
        with tqdm(total=total, desc=f"encoding {self.video.path.name}", unit="frame", disable=not progress, leave=False) as bar:
            self.answerer.set_video(self.video)
            bar.update(self.video.num_frames)
            if cache is not None:
                cache.warm(self.video, progress=bar.update)
        self.encode_seconds = time.perf_counter() - started
        self._save()

    # ---- asking -------------------------------------------------------------------
    def ask(self, question: str) -> GroundedAnswer:
        """Answer one question. Region syntax errors, regions outside the video and unknown
        handles raise RegionError / MaskHandleError before the model runs; the session
        stays usable after any error."""
        question_text, regions = self.prepare(question)
        with self._lock:
            started = time.perf_counter()
            result = self.answerer.ask(question_text, regions)
            answer = self._record(question, result, time.perf_counter() - started)
        return answer

    def prepare(self, question: str) -> tuple[str, list[Region]]:
        """Parse, resolve and validate the regions of a question against this video."""
        if not isinstance(question, str) or not question.strip():
            raise RegionError("the question is empty; ask something about the video.")
        question_text, regions = parse_question(question)
        checked = []
        for region in regions:
            region = region.resolve(self.store)
            checked.append(region.validate(self.video.height, self.video.width, self.video.num_frames))
        return question_text, checked

    def _record(self, question: str, result: Any, seconds: float) -> GroundedAnswer:
        raw = getattr(result, "raw", None) or getattr(result, "text", "")
        tracks: list[MaskTrack] = list(getattr(result, "tracks", []) or [])
        labels = list(getattr(result, "phrases", []) or [])
        phrases = []
        for index, track in enumerate(tracks):
            label = labels[index] if index < len(labels) and labels[index] else f"object {index + 1}"
            if not track.label:
                track.label = label
            handle = self.store.add(track, video=str(self.video.path.resolve()))
            phrases.append(GroundedPhrase(label, handle, tuple(track.frames_present)))
        answer = GroundedAnswer(
            text=_plain(raw),
            phrases=phrases,
            handles=[p.handle for p in phrases],
            turn=len(self.history) + 1,
            raw=raw,
            question=question,
            session_id=self.id,
            key_frames=list(self.key_frames(result)),
            seconds=seconds,
        )
        self.history.append(answer)
        self._save()
        return answer

    def key_frames(self, result: Any = None) -> list[int]:
        """The frames the model looked at closely for a turn (for overlays)."""
        for source in (result, self.answerer):
            frames = getattr(source, "key_frames", None)
            if frames is not None and len(frames):
                return [int(f) for f in frames]
        return self.video.sample(count=5)

    # ---- the rest -----------------------------------------------------------------
    def reset(self) -> None:
        """Forget the conversation; keep the encoded video and the stored masks."""
        with self._lock:
            self.answerer.reset()
            self.history.clear()
            self._save()

    def track(self, handle: str) -> MaskTrack:
        return self.store.get(handle)

    def close(self) -> None:
        """Free the cached frame features; the stored masks and session.json stay."""
        cache = feature_cache_of(self.answerer)
        if cache is not None:
            cache.clear()

    @property
    def turns(self) -> int:
        return len(self.history)

    def _save(self) -> None:
        record = {
            "session_id": self.id,
            "video": str(self.video.path),
            "mask_dir": str(self.store.mask_dir),
            "encode_seconds": round(self.encode_seconds, 3),
            "turns": [answer.to_json() for answer in self.history],
        }
        path = self.session_dir / SESSION_FILE
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(record, indent=1))
        tmp.replace(path)

    def __repr__(self) -> str:
        return f"Session({self.id}, {self.video!r}, turns={self.turns})"


def new_session_id() -> str:
    return "session-" + secrets.token_hex(4)


def _plain(text: str) -> str:
    text = re.sub(r"\s*\[SEG\]", "", text).replace("<p>", "").replace("</p>", "")
    return re.sub(r"\s+", " ", text).strip()


# ---- building the answerer ----------------------------------------------------------
def build_answerer(model: Any = None, *, segmenter: str | None = None, overrides: dict | None = None) -> Answerer:
    """An answerer from None (default checkpoint), a folder, a SamaModel, or an answerer."""
    if isinstance(model, Answerer) and not _is_torch_module(model):
        if segmenter or overrides:
            raise SamaError("segmenter/model overrides apply when sama-agent loads the model; this answerer is already built.")
        return model
    return predictor_for(load_model(model, overrides=overrides), segmenter)


def predictor_for(model: Any, segmenter: str | None = None) -> Answerer:
    """A predictor for one video. With the model's own SAM2 as segmenter, frame features
    are cached per session, so a session encodes each frame for segmentation once, not
    once per turn (both in memory-propagation and per-frame mode)."""
    from .plugins import get_registry

    config = model.config
    name = segmenter or config.segmenter
    if name == "sam2" and config.segmenter == "sam2":
        from .cached_predictor import CachedPredictor

        return CachedPredictor(model)
    from .model.predictor import SamaPredictor

    if segmenter is None:
        return SamaPredictor(model)  # builds the configured plugin with its options
    options = config.segmenter_options if name == config.segmenter else {}
    return SamaPredictor(model, segmenter=get_registry().create("segmenter", name, **options))


def feature_cache_of(answerer: Any) -> CachedEncoding | None:
    cache = getattr(answerer, "feature_cache", None)
    return cache if isinstance(cache, CachedEncoding) else None


def load_model(model: Any = None, *, overrides: dict | None = None):
    """A SamaModel from None (default checkpoint), a checkpoint folder, or a SamaModel."""
    if model is not None and not isinstance(model, (str, Path)):
        if overrides:
            raise SamaError("--encoder/--llm/--aggregator overrides need a checkpoint folder, not a loaded model.")
        return model
    from .defaults import default_model_dir

    folder = Path(model) if model is not None else default_model_dir()
    if not (folder / "config.json").is_file():
        raise CheckpointError(f"{folder}: not a SAMA checkpoint folder (no config.json). Point --model at a folder written by save_pretrained.")
    from .model.modeling.sama import SamaModel

    return SamaModel.from_pretrained(folder, **_part_overrides(folder, overrides or {}))


def _part_overrides(folder: Path, overrides: dict) -> dict:
    """A part swapped for another plugin starts from that plugin's own options, not the old part's."""
    saved = json.loads((folder / "config.json").read_text())
    result = dict(overrides)
    for part in ("encoder", "llm", "aggregator", "segmenter"):
        if part in overrides and overrides[part] != saved.get(part) and f"{part}_options" not in overrides:
            result[f"{part}_options"] = {}
    return result


def _is_torch_module(obj: Any) -> bool:
    try:
        import torch

        return isinstance(obj, torch.nn.Module)
    except ImportError:  # pragma: no cover
        return False


# ---- several sessions ---------------------------------------------------------------
class SessionPool:
    """Open sessions by id, sharing one MaskStore and one loaded model per checkpoint.

    The LangChain tools use one pool: `sama_ground(video=…)` reuses the session open on
    that video, so the video is encoded once however many calls refer to it.
    """

    def __init__(self, store: MaskStore, *, model: Any = None, segmenter: str | None = None,
                 model_overrides: dict | None = None, progress: bool = False):
        self.store = store
        self.model = model
        self.segmenter = segmenter
        self.model_overrides = model_overrides
        self.progress = progress
        self.sessions: dict[str, Session] = {}
        self._by_video: dict[str, str] = {}
        self._loaded_model: Any = None
        self._lock = threading.Lock()
        self._opening = threading.Lock()  # one video is opened at a time

    def add(self, session: Session) -> Session:
        with self._lock:
            self.sessions[session.id] = session
            self._by_video.setdefault(_video_key(session.video.path), session.id)
        return session

    def get(self, session_id: str) -> Session:
        session = self.sessions.get(str(session_id).strip())
        if session is None:
            known = ", ".join(self.sessions) or "none"
            hint = "" if SESSION_ID_PATTERN.match(str(session_id).strip()) else " Session ids look like 'session-0123abcd'."
            raise SamaError(
                f"no open session '{session_id}'.{hint} Open sessions: {known}. Pass a video path instead to open one."
            )
        return session

    def for_video(self, path: str | Path) -> Session:
        """The open session on this video, else a new one (opened once even under concurrent calls)."""
        clip = Video(path)  # raises a clear VideoError for a missing or broken file
        key = _video_key(clip.path)
        with self._opening:
            if key in self._by_video:
                return self.sessions[self._by_video[key]]
            session_id = new_session_id()
            session = Session.open(
                clip,
                model=self._answerer_source(),
                session_dir=self.store.session_dir / "sessions" / session_id,
                store=self.store,
                progress=self.progress,
                session_id=session_id,
            )
            return self.add(session)

    def _answerer_source(self) -> Any:
        if isinstance(self.model, Answerer) and not _is_torch_module(self.model):
            return self.model  # a ready answerer is per video: one session only
        if self._loaded_model is None:
            self._loaded_model = load_model(self.model, overrides=self.model_overrides)
        return predictor_for(self._loaded_model, self.segmenter)

    def close(self, session_id: str) -> None:
        """Close one session and forget it; its masks stay in the store."""
        session = self.get(session_id)
        with self._lock:
            self.sessions.pop(session.id, None)
            self._by_video = {key: sid for key, sid in self._by_video.items() if sid != session.id}
        session.close()

    def __len__(self) -> int:
        return len(self.sessions)


def _video_key(path: Path) -> str:
    resolved = Path(path).resolve()
    stat = resolved.stat()
    return f"{resolved}:{stat.st_mtime_ns}:{stat.st_size}"

