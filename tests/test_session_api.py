"""Session API with a real (small, really trained) SAMA model on a real mp4."""
import json

import numpy as np
import pytest

from session_helpers import GROUNDED_ANSWER, SQUARE_QUESTION, square_clip_mp4, one_torch_thread, trained_model_dir  # noqa: F401 (fixture)
from sama_agent.errors import MaskHandleError, RegionError, VideoError
from sama_agent.masks import MaskStore, MaskTrack
from sama_agent.session import Session, annotate, feature_cache_of


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return square_clip_mp4(tmp_path_factory.mktemp("clip") / "square.mp4")


@pytest.fixture(scope="module")
def session(clip, tmp_path_factory):
    return Session.open(clip[0], model=trained_model_dir(), session_dir=tmp_path_factory.mktemp("session"), progress=False)


@pytest.fixture(scope="module")
def first(session):
    return session.ask(SQUARE_QUESTION)


def iou(a, b):
    return (a & b).sum() / max((a | b).sum(), 1)


def test_a_grounded_answer_carries_stored_masks(session, first, clip):
    _, _, masks = clip
    assert first.turn == 1 and first.raw.startswith(GROUNDED_ANSWER.split(" .")[0])
    assert [p.phrase for p in first.phrases] == ["the red square"]
    (handle,) = first.handles
    assert handle in session.store
    track = session.store.get(handle)
    assert (track.height, track.width) == masks.shape[1:] and track.frames == list(range(len(masks)))
    assert session.store.video_of(handle) == str(clip[0])
    assert iou(track.to_array(len(masks)), masks) > 0.5  # trained on this clip; plumbing keeps masks in place
    assert first.annotated() == f"the red square [{handle}]."
    assert first.text == "the red square."


def test_turn_two_asks_about_the_mask_turn_one_grounded(session, first, clip):
    region = first.region(0)
    assert region.startswith("<region frame=") and f"mask={first.handles[0]}" in region
    second = session.ask(f"what is {region} doing ?")
    assert second.turn == first.turn + 1
    assert "moves right" in second.text
    # the conversation is kept: the model's context still holds turn 1
    seen = session.answerer.prompt_text()
    assert seen.count("segment the red square") == 1 and "moves right" in seen
    assert session.history[-1] is second


def test_the_video_is_encoded_once_per_session(session, first, clip):
    cache = feature_cache_of(session.answerer)
    assert cache is not None and len(cache) == len(clip[2])
    encoded = cache.misses
    session.ask(SQUARE_QUESTION)
    assert cache.misses == encoded  # later turns only read the cache
    assert cache.hits > 0


BAD_QUESTIONS = [
    ("what is <region frame=2 box=10,10> doing ?", RegionError, "box needs 4 numbers"),
    ("what is <region frame=2 box=10,10,40,40 doing ?", RegionError, "not closed"),
    ("what is <region frame=2 box=100,10,400,40> doing ?", RegionError, "outside the 128x96 frame"),
    ("what is <region frame=99 box=10,10,40,40> doing ?", RegionError, "frames 0 to 11"),
    ("what is <region frame=2 points=+500,5> doing ?", RegionError, "outside"),
    ("what is <region frame=2 mask=mask-0123456789ab> doing ?", MaskHandleError, "unknown mask handle"),
    ("what is <region frame=2 mask=mask-12> doing ?", MaskHandleError, "is not a mask handle"),
    ("what is <region frame=2 mask=missing/cat.png> doing ?", RegionError, "does not exist"),
    ("   ", RegionError, "empty"),
]


def test_bad_questions_fail_clearly_and_the_session_goes_on(session, first):
    turns = session.turns
    for question, error, expected in BAD_QUESTIONS:
        with pytest.raises(error) as caught:
            session.ask(question)
        assert expected in str(caught.value), (question, str(caught.value))
    assert session.turns == turns
    assert session.ask(SQUARE_QUESTION).handles  # still answers


def test_a_mask_from_another_video_does_not_fit(session, tmp_path):
    other = np.zeros((20, 30), bool)
    other[2:8, 2:8] = True
    handle = session.store.add(MaskTrack.from_masks({0: other}), video="other.mp4")
    with pytest.raises(RegionError, match="the video is 128x96"):
        session.ask(f"what is <region frame=0 mask={handle}> doing ?")


def test_masks_and_the_transcript_survive_a_restart(session, first):
    record = json.loads((session.session_dir / "session.json").read_text())
    assert record["session_id"] == session.id
    assert record["turns"][0]["handles"] == first.handles
    reopened = MaskStore(session.session_dir)  # what a new process does
    track = reopened.get(first.handles[0])
    assert np.array_equal(track.to_array(12), session.store.get(first.handles[0]).to_array(12))


def test_reset_forgets_the_conversation_but_not_the_masks(clip, tmp_path):
    session = Session.open(clip[0], model=trained_model_dir(), session_dir=tmp_path, progress=False)
    answer = session.ask(SQUARE_QUESTION)
    session.reset()
    assert session.turns == 0 and "segment" not in session.answerer.prompt_text()
    again = session.ask(f"what is {answer.region(0)} doing ?")  # earlier handles still resolve
    assert again.turn == 1


def test_opening_a_missing_video_says_so(tmp_path):
    with pytest.raises(VideoError, match="no such file"):
        Session.open(tmp_path / "nope.mp4", model=trained_model_dir(), session_dir=tmp_path, progress=False)


def test_annotate_marks_each_grounded_phrase_in_order():
    raw = "<p>the red disc</p> [SEG] passes <p>a blue star</p> [SEG] and [SEG]."
    assert annotate(raw, ["mask-aaaaaaaaaaaa", "mask-bbbbbbbbbbbb"]) == \
        "the red disc [mask-aaaaaaaaaaaa] passes a blue star [mask-bbbbbbbbbbbb] and [no mask]."
