"""The files a chat turn writes, from real stored masks over a real decoded video."""
import json

import numpy as np
from PIL import Image

from sama_agent.masks import MaskStore, MaskTrack, decode_rle
from sama_agent.overlay import PALETTE
from sama_agent.render import write_animation, write_turn
from sama_agent.session import GroundedAnswer, GroundedPhrase
from sama_agent.testing import write_square_clip


def _answer(store, video, masks):
    square = store.add(MaskTrack.from_masks(dict(enumerate(masks)), label="the red square"), video=str(video.path))
    strip = np.zeros_like(masks)
    strip[:, :10, :] = True
    top = store.add(MaskTrack.from_masks(dict(enumerate(strip)), label="the top strip"), video=str(video.path))
    phrases = [GroundedPhrase("the red square", square, tuple(range(len(masks)))), GroundedPhrase("the top strip", top)]
    raw = "<p>the red square</p> [SEG] moves right under <p>the top strip</p> [SEG]."
    return GroundedAnswer("the red square moves right under the top strip.", phrases, [square, top], 1, raw, key_frames=[0, 7]), strip


def _eroded(mask):
    inner = mask.copy()
    inner[1:] &= mask[:-1]
    inner[:-1] &= mask[1:]
    inner[:, 1:] &= mask[:, :-1]
    inner[:, :-1] &= mask[:, 1:]
    return inner


def test_turn_files_hold_the_masks_and_overlays(tmp_path):
    video, masks = write_square_clip(tmp_path / "clip", frames=10)
    store = MaskStore(tmp_path / "session")
    answer, strip = _answer(store, video, masks)
    files = write_turn(answer, video, store, tmp_path / "session" / "turn_001")

    assert [p.name for p in files.overlays] == ["overlay_frame_00000.png", "overlay_frame_00007.png"]
    overlay = np.asarray(Image.open(files.overlays[1]))
    frame = video.frame(7)
    assert overlay.shape == frame.shape
    # inside the square, blended with the first palette colour; outside both masks, untouched
    inside = masks[7] & ~strip[7]
    expected = (0.5 * frame[inside].astype(float) + 0.5 * PALETTE[0]).astype(np.uint8)
    interior = _eroded(inside)  # the outline is drawn solid
    assert np.abs(overlay[interior].astype(int) - expected[interior[inside]].astype(int)).max() <= 1
    outside = ~masks[7] & ~strip[7]
    assert np.array_equal(overlay[outside], frame[outside])

    for handle, truth in zip(answer.handles, (masks, strip)):
        payload = json.loads(files.rle[handle].read_text())
        assert np.array_equal(decode_rle(payload["frames"]["4"]), truth[4])
        pngs = sorted(files.png_dirs[handle].glob("frame_*.png"))
        assert len(pngs) == 10
        assert np.array_equal(np.asarray(Image.open(pngs[4])) > 0, truth[4])

    gif = Image.open(files.animation)
    assert gif.n_frames == 10 and gif.size == (video.width, video.height)
    record = json.loads(files.answer.read_text())
    assert record["handles"] == answer.handles
    assert record["annotated"] == f"the red square [{answer.handles[0]}] moves right under the top strip [{answer.handles[1]}]."


def test_animation_of_a_long_clip_is_subsampled_and_scaled(tmp_path):
    video, masks = write_square_clip(tmp_path / "clip", frames=30, size=(96, 128))
    track = MaskTrack.from_masks(dict(enumerate(masks)))
    path = write_animation(video, [track], tmp_path / "a.gif", max_frames=8, width=64)
    gif = Image.open(path)
    assert gif.n_frames == 8  # every 4th frame of 30
    assert gif.size == (64, 48)
    assert gif.info["duration"] == 400  # 4 frames at 10 fps


def test_a_turn_without_masks_writes_only_its_answer(tmp_path):
    video, _ = write_square_clip(tmp_path / "clip", frames=4)
    store = MaskStore(tmp_path / "session")
    answer = GroundedAnswer("a red square.", [], [], 2, "a red square.")
    files = write_turn(answer, video, store, tmp_path / "turn_002")
    assert files.overlays == [] and files.animation is None
    assert json.loads(files.answer.read_text())["text"] == "a red square."
