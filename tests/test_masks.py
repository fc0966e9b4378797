import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from sama_agent.errors import MaskHandleError
from sama_agent.masks import MaskHandle, MaskStore, MaskTrack, decode_rle, encode_rle, safe_child


@pytest.mark.parametrize("shape", [(1, 1), (7, 13), (48, 64), (120, 90)])
def test_rle_round_trips_exactly(shape):
    rng = np.random.default_rng(sum(shape))
    for density in (0.0, 0.03, 0.5, 1.0):
        mask = rng.random(shape) < density
        rle = encode_rle(mask)
        assert isinstance(rle["counts"], str) and rle["size"] == list(shape)
        back = decode_rle(json.loads(json.dumps(rle)))
        assert back.dtype == bool
        np.testing.assert_array_equal(back, mask)


def test_uncompressed_rle_counts_decode():
    # column-major runs: 2 zeros, 3 ones, 1 zero on a 3x2 mask
    mask = decode_rle({"size": [3, 2], "counts": [2, 3, 1]})
    np.testing.assert_array_equal(mask, np.array([[0, 1], [0, 1], [1, 0]], bool))


def _track():
    masks = {}
    for t in range(5):
        mask = np.zeros((40, 50), bool)
        mask[10:20, 5 + 3 * t : 15 + 3 * t] = True
        masks[t] = mask
    masks[5] = np.zeros((40, 50), bool)
    return MaskTrack.from_masks(masks, label="the red disc", object_id=2)


def test_track_geometry():
    track = _track()
    assert track.frames == list(range(6)) and track.frames_present == list(range(5))
    assert track.area(2) == 100 and track.box(2) == (11, 10, 21, 20)
    assert track.box(5) is None
    assert track.to_array(8).shape == (8, 40, 50)
    with pytest.raises(ValueError, match="expected"):
        track.set(0, np.zeros((3, 3), bool))


def test_handles_survive_a_restart(tmp_path):
    store = MaskStore(tmp_path / "session")
    handle = store.add(_track(), video="clip.mp4")
    assert MaskHandle(handle) == handle
    # a fresh process opens the same session directory
    code = (
        "import sys, json; from sama_agent.masks import MaskStore;"
        f"s = MaskStore({str(tmp_path / 'session')!r}); t = s.get({str(handle)!r});"
        "print(json.dumps([t.label, t.area(2), t.frames_present, s.video_of(" + repr(str(handle)) + ")]))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert json.loads(out) == ["the red disc", 100, [0, 1, 2, 3, 4], "clip.mp4"]
    assert store.handles() == [handle]


def test_unknown_and_malformed_handles(tmp_path):
    store = MaskStore(tmp_path)
    with pytest.raises(MaskHandleError, match="unknown mask handle 'mask-000000000000'"):
        store.get("mask-000000000000")
    with pytest.raises(MaskHandleError, match="not a mask handle"):
        store.get("../../etc/passwd")
    assert "mask-000000000000" not in store


def test_exports(tmp_path, frame_folder):
    from sama_agent.video import Video

    store = MaskStore(tmp_path / "s")
    handle = store.add(_track())
    out = tmp_path / "out"
    [rle_file] = store.export(handle, out, "rle", name="red")
    assert rle_file == (out / "red.json").resolve()
    assert MaskTrack.from_json(json.loads(rle_file.read_text())).area(1) == 100
    pngs = store.export(handle, out, "png")
    assert len(pngs) == 6
    assert (np.asarray(Image.open(pngs[2])) > 0).sum() == 100
    folder, frames = frame_folder
    big = np.zeros((20, 30), bool)
    big[2:6, 3:9] = True
    overlay_handle = store.add(MaskTrack.from_masks({0: big, 3: big}))
    overlays = store.export(overlay_handle, out, "overlay", name="ov", video=Video(folder))
    image = np.asarray(Image.open(overlays[0]))
    assert image.shape == (20, 30, 3)
    assert not np.array_equal(image[3, 4], frames[0][3, 4])  # tinted inside
    np.testing.assert_array_equal(image[15, 20], frames[0][15, 20])  # untouched outside


@pytest.mark.parametrize("name", ["../escape", "a/../../b", "/etc/x", "~/x"])
def test_export_names_cannot_escape(tmp_path, name):
    store = MaskStore(tmp_path / "s")
    handle = store.add(_track())
    with pytest.raises(MaskHandleError):
        store.export(handle, tmp_path / "out", "rle", name=name)
    assert not (tmp_path / "escape.json").exists()


def test_safe_child_allows_subfolders(tmp_path):
    assert safe_child(tmp_path, "a/b") == (tmp_path / "a" / "b").resolve()


def test_unknown_export_format(tmp_path):
    store = MaskStore(tmp_path)
    with pytest.raises(MaskHandleError, match="choose one of png, rle, overlay"):
        store.export(store.add(_track()), tmp_path, "gif")


def test_heavy_parts_keep_the_parts_whose_weight_reaches_a_share_of_the_heaviest():
    from sama_agent.masks import heavy_parts

    mask = np.zeros((20, 30), bool)
    mask[2:6, 2:8] = True  # left part, 24 pixels
    mask[10:18, 20:28] = True  # right part, 64 pixels
    left = mask & (np.arange(30) < 10)[None]
    weights = np.ones(mask.shape)
    assert np.array_equal(heavy_parts(mask, weights, 0.5), mask & ~left)  # 24 < 0.5 * 64
    assert np.array_equal(heavy_parts(mask, weights, 0.25), mask)  # 24 >= 16
    weights[left] = 10.0  # now the left part is the heavier: 240 against 64
    assert np.array_equal(heavy_parts(mask, weights, 0.5), left)
    assert np.array_equal(heavy_parts(mask, weights, 0.0), mask)
    assert np.array_equal(heavy_parts(mask[:8], weights[:8], 1.0), mask[:8])  # one part: unchanged
    assert not heavy_parts(np.zeros((5, 5), bool), np.ones((5, 5)), 0.5).any()
