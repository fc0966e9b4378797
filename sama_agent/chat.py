"""`sama-agent chat`: multi-turn grounded chat about one video, interactive or scripted."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from .errors import SamaError

REPL_HELP = """Ask about the video; point at things with regions:
  <region frame=12 box=40,30,120,200>   <region frame=3 points=+64,40>   <region frame=0 mask=mask-…>
Commands: :handles (masks so far)  :reset (new conversation, same video)  :help  :quit"""


@click.command("chat")
@click.option("--video", type=click.Path(), default=None,
              help="Video file or frame folder (default: the bundled sample video).")
@click.option("--ask", "asks", multiple=True, help="A question; repeat for several turns (no REPL).")
@click.option("--questions", type=click.Path(exists=True, dir_okay=False), default=None,
              help="A file with one question per line ('#' lines and blank lines skipped); no REPL.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object per turn (JSON Lines).")
@click.option("--model", "model_dir", type=click.Path(), default=None, help="Checkpoint folder (default: the shipped model).")
@click.option("--segmenter", default=None, help="Segmenter plugin that propagates masks (see `sama-agent plugins`).")
@click.option("--encoder", default=None, help="Encoder plugin, replacing the checkpoint's (its weights must fit).")
@click.option("--llm", default=None, help="LLM plugin, replacing the checkpoint's (its weights must fit).")
@click.option("--aggregator", default=None, help="Aggregator plugin, replacing the checkpoint's (its weights must fit).")
@click.option("--session-dir", type=click.Path(file_okay=False), default=None,
              help="Where masks and overlays go (default: a new folder under ~/.cache/sama-agent/sessions).")
@click.option("--no-render", is_flag=True, help="Store masks but skip overlay images and the animation.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def chat_command(video, asks, questions, as_json, model_dir, segmenter, encoder, llm, aggregator, session_dir, no_render, quiet):
    """Chat about a video; answers name objects and give each a mask handle.

    \b
    sama-agent chat --video clip.mp4
    sama-agent chat --video clip.mp4 --ask "segment the red disc" --ask "what is <region frame=0 mask=mask-…> doing?"
    """
    scripted = list(asks) + (_read_questions(questions) if questions else [])
    session = _open(video, model_dir, segmenter, {"encoder": encoder, "llm": llm, "aggregator": aggregator}, session_dir, quiet)
    out = _Printer(as_json)
    out.opened(session)
    if scripted or questions:
        failures = sum(not _turn(session, question, out, render=not no_render) for question in scripted)
        if failures:
            sys.exit(1)
        return
    _repl(session, out, render=not no_render)


def _open(video, model_dir, segmenter, overrides, session_dir, quiet):
    from .defaults import default_sample_video
    from .session import Session

    overrides = {k: v for k, v in overrides.items() if v}
    if quiet:  # transformers draws its own bar while it reads an LLM's weights
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()
    try:
        path = Path(video) if video else default_sample_video()
        return Session.open(path, model=model_dir, segmenter=segmenter, session_dir=session_dir,
                            model_overrides=overrides or None, progress=not quiet)
    except SamaError as exc:
        raise click.ClickException(str(exc)) from None


def _read_questions(path) -> list[str]:
    lines = Path(path).read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]


def _turn(session, question: str, out: "_Printer", *, render: bool) -> bool:
    """Ask one question and print it; an error is shown and the session goes on."""
    from .render import write_turn

    try:
        answer = session.ask(question)
        files = None
        if render:
            files = write_turn(answer, session.video, session.store, session.session_dir / f"turn_{answer.turn:03d}")
    except SamaError as exc:
        out.error(question, exc)
        return False
    out.answer(answer, files)
    return True


def _read_line(interactive: bool) -> str | None:
    """One line from the user; None at the end of input. A terminal gets line editing and history."""
    if interactive:
        try:
            import readline  # noqa: F401  (gives input() editing and history)
        except ImportError:  # pragma: no cover - not on every platform
            pass
        try:
            return input("you> ")
        except EOFError:
            click.echo()
            return None
    line = sys.stdin.readline()
    return line or None


def _repl(session, out: "_Printer", *, render: bool) -> None:
    interactive = sys.stdin.isatty()
    if not out.as_json:
        click.echo(REPL_HELP)
    while True:
        line = _read_line(interactive)
        if line is None:
            break
        question = line.strip()
        if not question:
            continue
        if question in (":quit", ":q", ":exit", "exit", "quit"):
            break
        if question == ":help":
            click.echo(REPL_HELP)
        elif question == ":reset":
            session.reset()
            out.note("conversation reset; the video stays encoded and earlier mask handles still work.")
        elif question == ":handles":
            out.handles(session)
        else:
            _turn(session, question, out, render=render)


class _Printer:
    """Human-readable lines, or one JSON object per line with --json."""

    def __init__(self, as_json: bool):
        self.as_json = as_json

    def _json(self, record: dict) -> None:
        click.echo(json.dumps(record))

    def opened(self, session) -> None:
        video = session.video
        if self.as_json:
            self._json({"event": "opened", "session_id": session.id, "video": str(video.path), "frames": video.num_frames,
                        "width": video.width, "height": video.height, "session_dir": str(session.session_dir),
                        "encode_seconds": round(session.encode_seconds, 3)})
            return
        click.echo(f"{session.id}: {video.path} ({video.num_frames} frames, {video.width}x{video.height}), "
                   f"encoded in {session.encode_seconds:.1f}s; files go to {session.session_dir}")

    def answer(self, answer, files) -> None:
        if self.as_json:
            record = {"event": "turn", **answer.to_json()}
            if files is not None:
                record["files"] = files.to_json()
            self._json(record)
            return
        click.echo(f"sama [{answer.turn}]> {answer.annotated()}")
        for phrase in answer.phrases:
            frames = phrase.frames_present
            span = f"frames {frames[0]}-{frames[-1]} ({len(frames)} visible)" if frames else "not visible"
            click.echo(f"    {phrase.handle}  {phrase.phrase}  {span}")
        if files is not None:
            click.echo(f"    files: {files.folder}")

    def error(self, question: str, exc: Exception) -> None:
        if self.as_json:
            self._json({"event": "error", "question": question, "error": str(exc), "type": exc.__class__.__name__})
        else:
            click.echo(f"error: {exc}", err=True)

    def note(self, text: str) -> None:
        if self.as_json:
            self._json({"event": "note", "text": text})
        else:
            click.echo(text)

    def handles(self, session) -> None:
        rows = [{"turn": a.turn, "handle": str(p.handle), "phrase": p.phrase} for a in session.history for p in a.phrases]
        if self.as_json:
            self._json({"event": "handles", "handles": rows})
            return
        for row in rows or [{"turn": "-", "handle": "(no masks yet)", "phrase": ""}]:
            click.echo(f"    turn {row['turn']}: {row['handle']}  {row['phrase']}")
