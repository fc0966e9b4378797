"""LangChain tools around grounded video chat, all bound to one MaskStore.

    tools = sama_toolkit(store=MaskStore("work/session"))
    by_name = {t.name: t for t in tools}
    message = by_name["sama_ground"].invoke({"type": "tool_call", "id": "1", "name": "sama_ground",
                                             "args": {"video": "clip.mp4", "question": "segment the red disc"}})
    message.artifact["handles"]   # ['mask-…'], accepted by mask_info, mask_export, mask_to_region

`sama_ground` answers a question about a video; its content names each mask
handle and its artifact carries them. The companion tools (`mask_info`,
`mask_export`, `mask_to_region`) and any tool from a `register_tools` plugin are
built by factories `factory(toolkit) -> BaseTool`. Every failure the agent can
fix (bad handle, bad region, missing file) comes back as a tool error message,
and the sessions keep working.
"""
from __future__ import annotations

import functools
import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal

import numpy as np
from langchain_core.tools import BaseTool, StructuredTool, ToolException
from pydantic import BaseModel, Field, model_validator

from .errors import MaskHandleError, SamaError
from .masks import EXPORT_FORMATS, MaskHandle, MaskStore, MaskTrack, safe_child
from .regions import PLACEHOLDER, REGION_PATTERN
from .session import Session, SessionPool, region_text
from .video import Video

ToolFactory = Callable[["SamaToolkit"], BaseTool]


# ---- the toolkit --------------------------------------------------------------------
@dataclass
class SamaToolkit:
    """What every tool is bound to: one mask store, the open sessions, and where exports may go.

    export_root: `mask_export` writes only inside this folder (relative `out_dir`s are taken
    inside it); None allows any folder.
    """

    store: MaskStore
    sessions: SessionPool
    export_root: Path | None = None
    failures: list[str] = field(default_factory=list)

    def tools(self, include_plugins: bool = True) -> list[BaseTool]:
        """sama_ground, then the tools every `register_tools` factory builds."""
        tools = [sama_ground_tool(self)]
        if include_plugins:
            tools += plugin_tools(self, taken={t.name for t in tools})
        return tools

    def track(self, handle: str) -> MaskTrack:
        return self.store.get(handle)

    def video_of(self, handle: str) -> Video:
        path = self.store.video_of(handle)
        if not path:
            raise MaskHandleError(f"mask {handle} does not record which video it was made on, so it cannot be overlaid.")
        return Video(path)

    def export_dir(self, out_dir: str | None) -> Path:
        if self.export_root is None:
            if not out_dir:
                raise MaskHandleError("give out_dir, the folder to export into.")
            return Path(out_dir).expanduser()
        root = Path(self.export_root).resolve()
        if not out_dir:
            return root
        wanted = Path(out_dir).expanduser()
        if wanted.is_absolute():
            if not wanted.resolve().is_relative_to(root):
                raise MaskHandleError(f"out_dir {wanted} is outside the export folder {root}; give a folder inside it.")
            return wanted.resolve()
        return safe_child(root, str(wanted))


def sama_toolkit(
    store: MaskStore | None = None,
    sessions: SessionPool | None = None,
    *,
    model: Any = None,
    segmenter: str | None = None,
    export_root: str | Path | None | Literal["default"] = "default",
    include_plugins: bool = True,
) -> list[BaseTool]:
    """The whole toolset bound to one mask store: sama_ground, then every registered tool.

    store: where masks persist (defaults to the pool's, else a folder under sessions_root()).
    sessions: a SessionPool to share with other code (built over `store` when omitted).
    model / segmenter: what the pool loads when sama_ground opens a new video.
    export_root: folder mask_export may write into ("default": `<store>/exports`; None: anywhere).
    """
    return build_toolkit(store, sessions, model=model, segmenter=segmenter, export_root=export_root).tools(include_plugins)


def build_toolkit(store=None, sessions=None, *, model=None, segmenter=None, export_root="default") -> "SamaToolkit":
    if store is None:
        if sessions is not None:
            store = sessions.store
        else:
            from .defaults import sessions_root
            from .session import new_session_id

            store = MaskStore(sessions_root() / ("tools-" + new_session_id()))
    if sessions is None:
        sessions = SessionPool(store, model=model, segmenter=segmenter)
    elif sessions.store is not store:
        raise ValueError("the session pool writes to another MaskStore; build the toolkit over one store (pass sessions.store).")
    root = store.session_dir / "exports" if export_root == "default" else (Path(export_root) if export_root else None)
    return SamaToolkit(store, sessions, root)


def plugin_tools(toolkit: SamaToolkit, taken: set[str] = frozenset()) -> list[BaseTool]:
    """Tools built by every `register_tools` factory; a broken factory is reported and skipped."""
    from .plugins import get_registry

    registry = get_registry()
    tools, taken = [], set(taken)
    for component in sorted(registry.components["tool"].values(), key=lambda c: (c.distribution != "sama-agent", c.name)):
        try:
            tool = component.obj(toolkit)
            if not isinstance(tool, BaseTool):
                raise TypeError(f"its factory returned {type(tool).__name__}, not a LangChain BaseTool")
            if tool.name in taken:
                raise ValueError(f"a tool named '{tool.name}' is already in the set")
        except Exception as exc:  # one bad plugin must not take the toolset down
            message = f"tool '{component.name}' from distribution '{component.distribution}' was skipped: {exc}"
            toolkit.failures.append(message)
            warnings.warn(message, stacklevel=2)
            continue
        taken.add(tool.name)
        tools.append(tool)
    return tools


def tool_factory(name: str) -> Callable[[ToolFactory], ToolFactory]:
    """Mark a factory with the name it registers under (`sama-agent plugins` shows it)."""

    def mark(factory: ToolFactory) -> ToolFactory:
        factory.name = name
        return factory

    return mark


def _as_tool_errors(function: Callable) -> Callable:
    """Turn the errors an agent can act on into ToolException, which the tool reports as its answer."""

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        try:
            return function(*args, **kwargs)
        except ToolException:
            raise
        except (SamaError, FileNotFoundError, ValueError, KeyError) as exc:
            message = exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)
            raise ToolException(f"error: {message}") from exc

    return wrapper


def _validation_message(error) -> str:
    problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'arguments'}: {e['msg']}" for e in error.errors())
    return f"error: invalid arguments ({problems}). Check the tool's argument schema and call it again."


def _structured(function, *, name, description, args_schema, artifact=True) -> StructuredTool:
    return StructuredTool.from_function(
        func=_as_tool_errors(function),
        name=name,
        description=description,
        args_schema=args_schema,
        response_format="content_and_artifact" if artifact else "content",
        handle_tool_error=True,
        handle_validation_error=_validation_message,
    )


# ---- sama_ground --------------------------------------------------------------------
class SamaGroundArgs(BaseModel):
    question: str = Field(description="The question about the video, e.g. 'segment the red disc' or "
                          "'what is <region frame=3 box=10,20,60,80> doing?'. Regions may be written inline.")
    video: str | None = Field(default=None, description="Path to a video file or frame folder (opens or reuses a session).")
    session_id: str | None = Field(default=None, description="Id of an open session (from an earlier sama_ground answer); "
                                   "keeps the conversation and skips re-encoding the video.")
    regions: list[str] | None = Field(default=None, description="Region prompts such as '<region frame=0 mask=mask-0123456789ab>' "
                                      "or '<region frame=2 box=4,8,40,60>'. Each fills the next '<mask>' in the question; "
                                      "without placeholders they are appended to it.")

    @model_validator(mode="after")
    def _needs_a_video(self):
        if not self.video and not self.session_id:
            raise ValueError("give either video (a path) or session_id (an open session)")
        return self


def merge_regions(question: str, regions: list[str] | None) -> str:
    """Put region prompts into a question: into its `<mask>` placeholders, else after it."""
    if not regions:
        return question
    for region in regions:
        if not REGION_PATTERN.fullmatch(region.strip()):
            raise SamaError(f"'{region}' is not a region prompt; write it like <region frame=12 box=40,30,120,200>.")
    holes = question.count(PLACEHOLDER)
    if holes == 0:
        return question.rstrip() + " " + " ".join(r.strip() for r in regions)
    if holes != len(regions):
        raise SamaError(f"the question has {holes} '<mask>' placeholder(s) but {len(regions)} region(s) were given; make them match.")
    pieces = question.split(PLACEHOLDER)
    return pieces[0] + "".join(region.strip() + piece for region, piece in zip(regions, pieces[1:]))


def describe_answer(answer, session: Session) -> str:
    """The answer text naming each mask handle, for an agent to read."""
    lines = [answer.annotated() or "(no answer text)"]
    for phrase in answer.phrases:
        frames = phrase.frames_present
        span = f"visible on {len(frames)} frame(s), {frames[0]}-{frames[-1]}" if frames else "not visible on any frame"
        lines.append(f"- {phrase.handle}: '{phrase.phrase}' ({span})")
    if not answer.phrases:
        lines.append("(no masks in this answer)")
    lines.append(f"session_id={session.id}, turn {answer.turn}, video {session.video.path}")
    return "\n".join(lines)


@tool_factory("sama_ground")
def sama_ground_tool(toolkit: SamaToolkit) -> BaseTool:
    def sama_ground(question: str, video: str | None = None, session_id: str | None = None, regions: list[str] | None = None):
        session = toolkit.sessions.get(session_id) if session_id else toolkit.sessions.for_video(video)
        answer = session.ask(merge_regions(question, regions))
        return describe_answer(answer, session), answer.to_json()

    return _structured(
        sama_ground,
        name="sama_ground",
        description=(
            "Ask a grounded question about a video. The answer names objects and gives each a mask handle "
            "(mask-…), a spatio-temporal mask over all frames that mask_info, mask_export and mask_to_region accept. "
            "Point at things with region prompts (<region frame=F box=x0,y0,x1,y1>, points=+x,y, or mask=HANDLE). "
            "Reuse session_id for follow-up questions about the same video."
        ),
        args_schema=SamaGroundArgs,
    )


# ---- mask_info ----------------------------------------------------------------------
class MaskInfoArgs(BaseModel):
    handle: str = Field(description="A mask handle, mask- followed by 12 hex digits.")
    frames: list[int] | None = Field(default=None, description="Only these frames (default: every segmented frame).")


def mask_info(track: MaskTrack, frames: list[int] | None = None) -> dict:
    """Per-frame area (pixels), box (x0,y0,x1,y1, end-exclusive) and centroid (x, y) of a track."""
    chosen = track.frames if frames is None else [int(f) for f in frames]
    missing = [f for f in chosen if f not in track.rles]
    if missing:
        raise MaskHandleError(f"frame(s) {missing[:8]} were not segmented; this mask covers frames {_ranges(track.frames)}.")
    per_frame = []
    for frame in chosen:
        mask = track.mask(frame)
        ys, xs = np.nonzero(mask)
        visible = len(xs) > 0
        per_frame.append({
            "frame": frame,
            "area": int(len(xs)),
            "box": [int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1] if visible else None,
            "centroid": [round(float(xs.mean()), 2), round(float(ys.mean()), 2)] if visible else None,
        })
    present = [row for row in per_frame if row["area"]]
    summary = {
        "frames_segmented": len(per_frame),
        "frames_present": [row["frame"] for row in present],
        "mean_area": round(float(np.mean([r["area"] for r in present])), 1) if present else 0.0,
        "max_area": max((r["area"] for r in present), default=0),
    }
    if present:
        (x_first, y_first), (x_last, y_last) = present[0]["centroid"], present[-1]["centroid"]
        summary["centroid_shift"] = [round(x_last - x_first, 2), round(y_last - y_first, 2)]
        boxes = np.array([r["box"] for r in present])
        summary["union_box"] = [int(boxes[:, 0].min()), int(boxes[:, 1].min()), int(boxes[:, 2].max()), int(boxes[:, 3].max())]
    return {"label": track.label, "height": track.height, "width": track.width, **summary, "per_frame": per_frame}


@tool_factory("mask_info")
def mask_info_tool(toolkit: SamaToolkit) -> BaseTool:
    def run(handle: str, frames: list[int] | None = None):
        handle = MaskHandle(handle)
        info = {"handle": str(handle), "video": toolkit.store.video_of(handle), **mask_info(toolkit.track(handle), frames)}
        return json.dumps(info), info

    return _structured(
        run,
        name="mask_info",
        description=(
            "Measure a mask handle: for each frame its area in pixels, its box [x0,y0,x1,y1] (end-exclusive) and "
            "centroid [x,y]; which frames the object is present on; its overall movement (centroid_shift) and union_box."
        ),
        args_schema=MaskInfoArgs,
    )


# ---- mask_export --------------------------------------------------------------------
class MaskExportArgs(BaseModel):
    handle: str = Field(description="A mask handle, mask- followed by 12 hex digits.")
    format: Literal["png", "rle", "overlay"] = Field(default="png", description="png: one binary PNG per frame; "
                                                     "rle: one COCO-RLE JSON; overlay: the video frames with the mask drawn on.")
    out_dir: str | None = Field(default=None, description="Folder to write into (inside the export folder; default: the export folder).")
    name: str | None = Field(default=None, description="File or folder name inside out_dir (default: the handle). No '..', not absolute.")


@tool_factory("mask_export")
def mask_export_tool(toolkit: SamaToolkit) -> BaseTool:
    def run(handle: str, format: str = "png", out_dir: str | None = None, name: str | None = None):
        if format not in EXPORT_FORMATS:
            raise MaskHandleError(f"unknown format '{format}'; choose one of {', '.join(EXPORT_FORMATS)}.")
        handle = MaskHandle(handle)
        toolkit.track(handle)  # an unknown handle fails before anything is written
        target = toolkit.export_dir(out_dir)
        video = toolkit.video_of(handle) if format == "overlay" else None
        written = toolkit.store.export(handle, target, format, name=name, video=video)
        paths = [str(p) for p in written]
        where = paths[0] if len(paths) == 1 else f"{len(paths)} files in {Path(paths[0]).parent}" if paths else "nothing"
        return f"exported {handle} as {format}: {where}", {"handle": str(handle), "format": format, "paths": paths}

    return _structured(
        run,
        name="mask_export",
        description="Write a mask handle to files: per-frame PNG masks, one RLE JSON, or overlay images on the video frames.",
        args_schema=MaskExportArgs,
    )


# ---- mask_to_region -----------------------------------------------------------------
class MaskToRegionArgs(BaseModel):
    handle: str = Field(description="A mask handle, mask- followed by 12 hex digits.")
    frame: int | None = Field(default=None, description="Frame to point on (default: the frame where the object is largest).")


def region_for(track: MaskTrack, handle: str, frame: int | None = None) -> tuple[str, int]:
    """The region prompt for a stored mask on one frame where it is visible."""
    if frame is None:
        present = track.frames_present
        if not present:
            raise MaskHandleError(f"mask {handle} is empty on every frame; there is nothing to point at.")
        frame = max(present, key=lambda f: (track.area(f), -f))
    elif frame not in track.rles or track.area(frame) == 0:
        raise MaskHandleError(
            f"mask {handle} is not visible on frame {frame}; it is visible on frames {_ranges(track.frames_present)}."
        )
    return region_text(handle, frame), int(frame)


@tool_factory("mask_to_region")
def mask_to_region_tool(toolkit: SamaToolkit) -> BaseTool:
    def run(handle: str, frame: int | None = None):
        handle = MaskHandle(handle)
        text, chosen = region_for(toolkit.track(handle), handle, frame)
        return text, {"region": text, "handle": str(handle), "frame": chosen}

    return _structured(
        run,
        name="mask_to_region",
        description=(
            "Turn a mask handle into a region prompt like <region frame=7 mask=mask-…> to put in the next sama_ground "
            "question (e.g. 'what is <region …> doing?')."
        ),
        args_schema=MaskToRegionArgs,
    )


def _ranges(frames: list[int]) -> str:
    """[0,1,2,5,6] -> '0-2, 5-6'."""
    if not frames:
        return "none"
    spans, start, previous = [], frames[0], frames[0]
    for frame in list(frames[1:]) + [None]:
        if frame is not None and frame == previous + 1:
            previous = frame
            continue
        spans.append(f"{start}-{previous}" if previous != start else str(start))
        if frame is not None:
            start = previous = frame
    return ", ".join(spans)
