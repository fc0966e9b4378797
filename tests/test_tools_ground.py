"""sama_ground with a real model: the LangChain round trip to mask_info, and the
errors an agent sees as tool messages while its sessions keep working."""
import json

import numpy as np
import pytest
from pycocotools import mask as coco_mask

from session_helpers import SQUARE_QUESTION, square_clip_mp4, one_torch_thread, trained_model_dir  # noqa: F401 (fixture)
from sama_agent.masks import MaskStore
from sama_agent.session import SessionPool
from sama_agent.tools import merge_regions, sama_toolkit
from sama_agent.errors import SamaError


def call(tool, args, call_id="c1"):
    return tool.invoke({"type": "tool_call", "id": call_id, "name": tool.name, "args": args})


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return square_clip_mp4(tmp_path_factory.mktemp("clip") / "square.mp4")


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return MaskStore(tmp_path_factory.mktemp("store"))


@pytest.fixture(scope="module")
def tools(store):
    return {t.name: t for t in sama_toolkit(store=store, model=trained_model_dir())}


@pytest.fixture(scope="module")
def grounded(tools, clip):
    return call(tools["sama_ground"], {"video": str(clip[0]), "question": SQUARE_QUESTION})


def test_sama_ground_names_each_handle_and_returns_them(grounded, store):
    assert grounded.status == "success", grounded.content
    artifact = grounded.artifact
    (handle,) = artifact["handles"]
    assert artifact["phrases"][0] == {"phrase": "the red square", "handle": handle,
                                      "frames_present": artifact["phrases"][0]["frames_present"]}
    assert f"the red square [{handle}]" in grounded.content
    assert f"session_id={artifact['session_id']}" in grounded.content
    assert handle in store


def test_mask_info_gives_the_real_area_and_box_of_the_grounded_mask(tools, grounded, store):
    handle = grounded.artifact["handles"][0]
    info = call(tools["mask_info"], {"handle": handle}, "c2")
    assert info.status == "success", info.content
    # decode the persisted mask ourselves, straight from the store's file
    saved = json.loads((store.mask_dir / f"{handle}.json").read_text())
    assert len(info.artifact["per_frame"]) == len(saved["frames"])
    for row in info.artifact["per_frame"]:
        rle = saved["frames"][str(row["frame"])]
        mask = coco_mask.decode({"size": rle["size"], "counts": rle["counts"].encode()}).astype(bool)
        ys, xs = np.nonzero(mask)
        assert row["area"] == len(xs)
        assert row["box"] == ([int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1] if len(xs) else None)
    assert info.artifact["frames_present"], "the trained model finds the square on some frames"


def test_follow_up_about_the_found_mask_in_the_same_session(tools, grounded):
    handle, session_id = grounded.artifact["handles"][0], grounded.artifact["session_id"]
    region = call(tools["mask_to_region"], {"handle": handle}, "c3").content
    answer = call(tools["sama_ground"], {"session_id": session_id, "question": "what is <mask> doing ?", "regions": [region]}, "c4")
    assert answer.status == "success", answer.content
    assert answer.artifact["session_id"] == session_id and answer.artifact["turn"] >= 2
    assert "moves right" in answer.artifact["text"]


def test_the_same_video_path_reuses_its_session(tools, grounded, clip):
    again = call(tools["sama_ground"], {"video": str(clip[0]), "question": SQUARE_QUESTION}, "c5")
    assert again.artifact["session_id"] == grounded.artifact["session_id"]


BAD_CALLS = [
    ({"video": "/no/such/video.mp4", "question": "hi"}, "no such file"),
    ({"session_id": "session-00000000", "question": "hi"}, "no open session"),
    ({"question": "what is <region frame=1 box=1,2> doing ?"}, "box needs 4 numbers"),
    ({"question": "what is <mask> doing ?", "regions": ["<region frame=0 box=0,0,500,40>"]}, "outside the 128x96 frame"),
    ({"question": "what is <mask> doing ?", "regions": ["<region frame=0 mask=mask-0123456789ab>"]}, "unknown mask handle"),
    ({"question": "what is <mask> doing ?", "regions": ["box=1,2,3,4"]}, "is not a region prompt"),
    ({"question": "what are <mask> and <mask> ?", "regions": ["<region frame=0 box=0,0,5,5>"]}, "2 '<mask>' placeholder(s) but 1"),
    ({"question": "what is <mask> doing ?", "regions": ["<region frame=40 box=0,0,5,5>"]}, "frames 0 to 11"),
]


def test_errors_come_back_as_tool_messages_and_the_session_keeps_working(tools, grounded):
    session_id = grounded.artifact["session_id"]
    for args, expected in BAD_CALLS:
        if "video" not in args and "session_id" not in args:
            args = {**args, "session_id": session_id}
        message = call(tools["sama_ground"], args, "bad")
        assert message.status == "error", args
        assert message.content.startswith("error:") and expected in message.content, message.content
    fine = call(tools["sama_ground"], {"session_id": session_id, "question": SQUARE_QUESTION}, "ok")
    assert fine.status == "success" and fine.artifact["handles"]


def test_the_toolkit_shares_a_pool_with_other_code(store, clip):
    pool = SessionPool(store, model=trained_model_dir())
    tools = {t.name: t for t in sama_toolkit(sessions=pool)}
    session = pool.for_video(clip[0])
    answer = call(tools["sama_ground"], {"session_id": session.id, "question": SQUARE_QUESTION})
    assert answer.artifact["turn"] == 1 and session.history[0].handles == answer.artifact["handles"]
    with pytest.raises(ValueError, match="another MaskStore"):
        sama_toolkit(store=MaskStore(store.session_dir / "elsewhere"), sessions=pool)


def test_merge_regions():
    region = "<region frame=0 box=1,2,3,4>"
    assert merge_regions("what is <mask> doing?", [region]) == f"what is {region} doing?"
    assert merge_regions("describe", [region]) == f"describe {region}"
    assert merge_regions("describe", None) == "describe"
    with pytest.raises(SamaError):
        merge_regions("<mask>", [region, region])


def test_closing_a_session_frees_it_and_keeps_its_masks(store, clip):
    pool = SessionPool(store, model=trained_model_dir())
    session = pool.for_video(clip[0])
    handle = session.ask(SQUARE_QUESTION).handles[0]
    pool.close(session.id)
    assert len(pool) == 0
    with pytest.raises(SamaError, match="no open session"):
        pool.get(session.id)
    assert handle in store
    assert pool.for_video(clip[0]).id != session.id  # the video opens afresh


def test_concurrent_calls_on_one_video_share_one_session(tmp_path, clip):
    from concurrent.futures import ThreadPoolExecutor

    tools = {t.name: t for t in sama_toolkit(store=MaskStore(tmp_path), model=trained_model_dir())}
    args = {"video": str(clip[0]), "question": SQUARE_QUESTION}
    with ThreadPoolExecutor(2) as pool:
        answers = list(pool.map(lambda i: call(tools["sama_ground"], args, f"c{i}"), range(2)))
    assert all(a.status == "success" for a in answers), [a.content for a in answers]
    assert answers[0].artifact["session_id"] == answers[1].artifact["session_id"]
    assert sorted(a.artifact["turn"] for a in answers) == [1, 2]  # asks on one session run one at a time
