"""`sama-agent chat` end to end: a real process, a real model, a real mp4."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from session_helpers import SQUARE_QUESTION, square_clip_mp4, one_torch_thread, trained_model_dir  # noqa: F401 (fixture)
from sama_agent.cli import build_cli
from sama_agent.defaults import default_sample_video
from sama_agent.masks import MaskStore
from sama_agent.video import Video

SAMA_AGENT = Path(sys.executable).parent / "sama-agent"


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return square_clip_mp4(tmp_path_factory.mktemp("clip") / "square.mp4")


def chat(*args):
    return CliRunner().invoke(build_cli(), ["chat", "--model", str(trained_model_dir()), "--quiet", *args])


def events(output: str) -> list[dict]:
    return [json.loads(line) for line in output.splitlines() if line.startswith("{")]


class Repl:
    """The interactive chat in its own process, driven line by line through its stdin."""

    def __init__(self, *args):
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}  # as one_torch_thread does in-process
        self.process = subprocess.Popen([str(SAMA_AGENT), "chat", *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE, text=True, env=env)

    def read(self) -> dict:
        line = self.process.stdout.readline()
        if not line:
            raise AssertionError(f"chat ended early: {self.process.stderr.read()}")
        return json.loads(line)

    def say(self, text: str) -> dict:
        self.process.stdin.write(text + "\n")
        self.process.stdin.flush()
        return self.read()

    def close(self) -> int:
        self.process.stdin.write(":quit\n")
        self.process.stdin.close()
        return self.process.wait(timeout=120)


def test_two_turns_where_turn_two_points_at_turn_one_mask(tmp_path):
    """On the bundled sample video, in the interactive chat (the tests' small model answers)."""
    video = default_sample_video()
    frames = Video(video).num_frames
    session_dir = tmp_path / "chat"
    repl = Repl("--video", str(video), "--model", str(trained_model_dir()), "--session-dir", str(session_dir), "--json", "--quiet")
    try:
        opened = repl.read()
        assert opened["event"] == "opened" and opened["frames"] == frames
        first = repl.say(SQUARE_QUESTION)
        assert first["event"] == "turn" and first["turn"] == 1, first
        handle = first["handles"][0]
        bad = repl.say("what is <region frame=3 box=1,2,3> doing ?")  # an error, and the chat goes on
        assert bad["event"] == "error" and "box needs 4 numbers" in bad["error"]
        second = repl.say(f"what is <region frame=3 mask={handle}> doing ?")
        assert second["event"] == "turn" and second["turn"] == 2 and "moves right" in second["text"], second
        listed = repl.say(":handles")
        assert [row["handle"] for row in listed["handles"]] == first["handles"] + second["handles"]
    finally:
        assert repl.close() == 0

    files = first["files"]
    turn_dir = Path(files["folder"])
    assert turn_dir == session_dir / "turn_001"
    assert sorted(Path(p).name for p in files["overlays"]) == [f"overlay_frame_{k:05d}.png" for k in sorted(first["key_frames"])]
    assert Image.open(files["animation"]).n_frames == frames
    # reopen: the masks as written to disk are the masks the store hands out after a restart
    track = MaskStore(session_dir).get(handle)
    rle = json.loads(Path(files["rle"][handle]).read_text())
    assert rle["handle"] == handle and len(rle["frames"]) == frames
    pngs = sorted(Path(files["png_dirs"][handle]).glob("frame_*.png"))
    assert len(pngs) == frames
    for frame, png in enumerate(pngs):
        assert np.array_equal(np.asarray(Image.open(png)) > 0, track.mask(frame))
    transcript = json.loads((session_dir / "session.json").read_text())
    assert [turn["question"] for turn in transcript["turns"]] == [SQUARE_QUESTION, f"what is <region frame=3 mask={handle}> doing ?"]


def test_scripted_questions_report_errors_and_carry_on(clip, tmp_path):
    video = clip[0]
    questions = tmp_path / "questions.txt"
    questions.write_text(f"# a comment\n{SQUARE_QUESTION}\n\nwhat is <region frame=0 box=0,0,999,10> doing ?\n"
                         "what is <region frame=0 mask=mask-0123456789ab> doing ?\n"
                         "what is <region frame=0 mask=nowhere.png> doing ?\n"
                         "what is <region frame=2 box=10,30,50,70> doing ?\n")
    result = chat("--video", str(video), "--questions", str(questions), "--session-dir", str(tmp_path / "s"), "--json", "--no-render")
    lines = events(result.output)
    assert [e["event"] for e in lines] == ["opened", "turn", "error", "error", "error", "turn"]
    assert "outside the 128x96 frame" in lines[2]["error"]
    assert "unknown mask handle" in lines[3]["error"]
    assert "does not exist" in lines[4]["error"]
    assert lines[5]["turn"] == 2
    assert result.exit_code == 1  # a script learns that some questions failed
    assert not (tmp_path / "s" / "turn_001").exists()  # --no-render


def test_handles_from_an_earlier_run_resolve_in_a_new_one(clip, tmp_path):
    video, session_dir = clip[0], tmp_path / "s"
    first = chat("--video", str(video), "--ask", SQUARE_QUESTION, "--session-dir", str(session_dir))
    assert first.exit_code == 0, first.output
    handle = next(word for word in first.output.split() if word.startswith("mask-"))
    assert f"the red square [{handle}]" in first.output  # grounded phrases shown with their handles
    again = chat("--video", str(video), "--ask", f"what is <region frame=5 mask={handle}> doing ?",
                 "--session-dir", str(session_dir), "--json", "--no-render")
    assert again.exit_code == 0, again.output
    last = events(again.output)[-1]
    assert last["event"] == "turn" and last["turn"] == 1 and handle in last["question"]


@pytest.mark.parametrize("args, expected", [
    (["--video", "/no/such/clip.mp4", "--ask", "hi"], "no such file"),
    (["--questions", "/no/such/questions.txt"], "does not exist"),
])
def test_missing_files_are_named(args, expected):
    result = chat(*args)
    assert result.exit_code != 0 and expected in result.output


def test_a_missing_checkpoint_says_how_to_train_one(clip, tmp_path):
    result = CliRunner().invoke(build_cli(), ["chat", "--video", str(clip[0]), "--model", str(tmp_path), "--ask", "hi", "--quiet"])
    assert result.exit_code != 0 and "no config.json" in result.output


def test_without_a_checkpoint_the_error_says_how_to_train_one(clip, tmp_path, monkeypatch):
    monkeypatch.setenv("SAMA_AGENT_MODEL", str(tmp_path / "empty"))
    result = CliRunner().invoke(build_cli(), ["chat", "--video", str(clip[0]), "--ask", "hi", "--quiet"])
    assert result.exit_code != 0
    assert "sama-agent train --config" in result.output and "--model DIR" in result.output


def test_segmenter_plugin_is_picked_by_name(clip, tmp_path):
    from sama_agent.plugins import get_registry

    others = [name for name in get_registry().names("segmenter") if name != "sam2"]
    if not others:
        pytest.skip("no third-party segmenter plugin is installed")
    result = chat("--video", str(clip[0]), "--segmenter", others[0], "--ask", SQUARE_QUESTION,
                  "--session-dir", str(tmp_path), "--json", "--no-render")
    assert result.exit_code == 0, result.output
    turn = events(result.output)[-1]
    track = MaskStore(tmp_path).get(turn["handles"][0])
    assert track.frames == list(range(len(clip[2])))


@pytest.mark.parametrize("args, expected", [
    (["--encoder", "no-such-encoder"], "no encoder named 'no-such-encoder'"),
    (["--segmenter", "no-such-segmenter"], "no segmenter named 'no-such-segmenter'"),
    (["--encoder", "efficientnet-lite0"], "load it with the config it was saved with"),
])
def test_swapped_parts_that_do_not_exist_or_fit_are_refused(clip, args, expected):
    result = chat("--video", str(clip[0]), "--ask", "hi", *args)
    assert result.exit_code != 0 and expected in result.output, result.output


def test_the_repl_in_plain_text(clip, tmp_path):
    lines = [SQUARE_QUESTION, ":handles", "what is <region frame=0 box=0,0,9999,5> doing ?", ":reset", ":handles", ":help", ":quit",
             "never asked"]
    result = CliRunner().invoke(build_cli(), ["chat", "--model", str(trained_model_dir()), "--quiet", "--video", str(clip[0]),
                                              "--session-dir", str(tmp_path), "--no-render"], input="\n".join(lines) + "\n")
    assert result.exit_code == 0, result.output
    out = result.output
    handle = next(word for word in out.split() if word.startswith("mask-"))
    assert f"sama [1]> the red square [{handle}]." in out
    assert f"turn 1: {handle}  the red square" in out
    assert "error: " in out and "outside the 128x96 frame" in out
    assert "conversation reset" in out and "(no masks yet)" in out
    assert out.count("Commands:") == 2  # the banner and :help
    assert "never asked" not in out and "sama [2]>" not in out


def test_the_shipped_default_on_the_sample_video(tmp_path):
    """The README's command: no --model, the bundled sample video, a follow-up through a handle."""
    from sama_agent.defaults import default_model_dir
    from sama_agent.errors import CheckpointError

    try:
        default_model_dir()
    except CheckpointError as exc:
        pytest.skip(f"the default checkpoint is not installed: {exc}")
    runner = CliRunner()
    first = runner.invoke(build_cli(), ["chat", "--quiet", "--json", "--session-dir", str(tmp_path),
                                        "--ask", "Please segment the orange square."])
    assert first.exit_code == 0, first.output
    assert "Loading weights" not in first.output  # --quiet: no bar from transformers either
    turn = events(first.output)[-1]
    assert turn["event"] == "turn" and turn["handles"], turn
    handle = turn["handles"][0]
    frame = turn["phrases"][0]["frames_present"][0]
    second = runner.invoke(build_cli(), ["chat", "--quiet", "--json", "--session-dir", str(tmp_path), "--no-render",
                                         "--ask", f"What does <region frame={frame} mask={handle}> do in the video?"])
    assert second.exit_code == 0, second.output
    assert events(second.output)[-1]["event"] == "turn"
    assert Path(turn["files"]["animation"]).is_file() and MaskStore(tmp_path).get(handle).frames == list(range(24))
