"""The mask tools (mask_info, mask_export, mask_to_region) on real MaskStore data,
invoked the way an agent invokes them: tool calls in, ToolMessages out."""
import json

import numpy as np
import pytest
from langchain_core.messages import ToolMessage
from PIL import Image

from sama_agent import plugins
from sama_agent.hookspecs import hookimpl
from sama_agent.masks import MaskStore, MaskTrack, decode_rle
from sama_agent.regions import parse_region
from sama_agent.testing import write_square_clip
from sama_agent.tools import SamaToolkit, build_toolkit, sama_toolkit


def call(tool, args, call_id="call-1") -> ToolMessage:
    return tool.invoke({"type": "tool_call", "id": call_id, "name": tool.name, "args": args})


@pytest.fixture
def stored(tmp_path):
    """A store holding the exact track of a moving square, and the video it was made on."""
    video, masks = write_square_clip(tmp_path / "clip", frames=8)
    masks[5] = False  # the square is hidden on frame 5
    store = MaskStore(tmp_path / "session")
    track = MaskTrack.from_masks({t: m for t, m in enumerate(masks)}, label="the red square")
    handle = store.add(track, video=str(video.path))
    return store, handle, masks, video


@pytest.fixture
def tools(stored):
    store = stored[0]
    return {tool.name: tool for tool in sama_toolkit(store=store)}


def test_toolkit_holds_sama_ground_and_the_registered_tools(tools):
    assert {"sama_ground", "mask_info", "mask_export", "mask_to_region"} <= set(tools)
    registry = plugins.get_registry()
    assert {"mask_info", "mask_export", "mask_to_region"} <= set(registry.names("tool"))
    assert registry.get("tool", "mask_info").distribution == "sama-agent"


def test_mask_info_reports_the_real_area_box_and_centroid(tools, stored):
    _, handle, masks, video = stored
    message = call(tools["mask_info"], {"handle": handle})
    assert message.status == "success"
    info = message.artifact
    assert json.loads(message.content) == info
    assert info["video"] == str(video.path)
    assert info["label"] == "the red square"
    assert info["frames_present"] == [0, 1, 2, 3, 4, 6, 7]
    for row in info["per_frame"]:
        truth = masks[row["frame"]]
        assert row["area"] == int(truth.sum())
        if truth.any():
            ys, xs = np.nonzero(truth)
            assert row["box"] == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
            assert row["centroid"] == pytest.approx([xs.mean(), ys.mean()], abs=0.01)
        else:
            assert row["box"] is None and row["centroid"] is None
    # the square moves 3 px right per frame: 7 frames apart -> 21 px
    assert info["centroid_shift"] == pytest.approx([21.0, 0.0])


def test_mask_info_on_chosen_frames_and_a_frame_never_segmented(tools, stored):
    _, handle, masks, _ = stored
    message = call(tools["mask_info"], {"handle": handle, "frames": [2, 5]})
    assert [row["frame"] for row in message.artifact["per_frame"]] == [2, 5]
    assert message.artifact["per_frame"][1]["area"] == 0
    message = call(tools["mask_info"], {"handle": handle, "frames": [40]})
    assert message.status == "error"
    assert "not segmented" in message.content and "0-7" in message.content


@pytest.mark.parametrize("handle, expected", [
    ("mask-000000000000", "unknown mask handle"),
    ("the red square", "is not a mask handle"),
])
def test_bad_handles_become_tool_error_messages(tools, stored, handle, expected):
    for name in ("mask_info", "mask_export", "mask_to_region"):
        message = call(tools[name], {"handle": handle})
        assert message.status == "error", name
        assert message.content.startswith("error:") and expected in message.content, message.content
    # the store still answers afterwards
    assert call(tools["mask_info"], {"handle": stored[1]}).status == "success"


def test_missing_arguments_are_reported_not_raised(tools):
    message = call(tools["mask_info"], {"frames": [1]})
    assert message.status == "error"
    assert "handle" in message.content and "invalid arguments" in message.content
    message = call(tools["sama_ground"], {"question": "segment the square"})
    assert message.status == "error" and "video" in message.content and "session_id" in message.content


def test_mask_export_png_rle_and_overlay(tools, stored):
    store, handle, masks, video = stored
    png = call(tools["mask_export"], {"handle": handle, "format": "png", "out_dir": "pngs"})
    assert png.status == "success", png.content
    paths = png.artifact["paths"]
    assert len(paths) == 8
    assert all(p.startswith(str((store.session_dir / "exports" / "pngs").resolve())) for p in paths)
    for t, path in enumerate(paths):
        assert np.array_equal(np.asarray(Image.open(path)) > 0, masks[t])

    rle = call(tools["mask_export"], {"handle": handle, "format": "rle", "name": "square"})
    (rle_path,) = rle.artifact["paths"]
    assert rle_path.endswith("square.json")
    payload = json.loads(open(rle_path).read())
    assert payload["handle"] == handle
    assert np.array_equal(decode_rle(payload["frames"]["3"]), masks[3])

    overlay = call(tools["mask_export"], {"handle": handle, "format": "overlay", "name": "over"})
    assert overlay.status == "success", overlay.content
    image = np.asarray(Image.open(overlay.artifact["paths"][0]))
    frame = video.frame(0)
    assert image.shape == frame.shape
    inside = masks[0]
    assert not np.array_equal(image[inside], frame[inside])  # tinted inside the mask
    assert np.array_equal(image[~inside][:100], frame[~inside][:100])  # untouched far outside


@pytest.mark.parametrize("args, expected", [
    ({"name": "../escape"}, "not allowed"),
    ({"name": "/tmp/abs"}, "not allowed"),
    ({"out_dir": "../../elsewhere"}, "not allowed"),
    ({"out_dir": "/"}, "outside the export folder"),
    ({"format": "gif"}, "invalid arguments"),
])
def test_mask_export_cannot_leave_its_folder(tools, stored, tmp_path, args, expected):
    message = call(tools["mask_export"], {"handle": stored[1], **args})
    assert message.status == "error"
    assert expected in message.content, message.content
    assert not (tmp_path / "escape").exists() and not (tmp_path / "elsewhere").exists()


def test_export_anywhere_when_the_toolkit_allows_it(stored, tmp_path):
    store, handle, _, _ = stored
    tools = {t.name: t for t in sama_toolkit(store=store, export_root=None)}
    message = call(tools["mask_export"], {"handle": handle, "format": "rle", "out_dir": str(tmp_path / "out")})
    assert message.status == "success" and (tmp_path / "out" / f"{handle}.json").is_file()


def test_mask_to_region_points_at_the_largest_visible_frame(tools, stored):
    store, handle, masks, _ = stored
    masks_area = masks.reshape(len(masks), -1).sum(1)
    message = call(tools["mask_to_region"], {"handle": handle})
    region = parse_region(message.content)
    assert region.frame == int(np.argmax(masks_area)) and region.mask_ref == handle
    resolved = region.resolve(store)
    assert np.array_equal(resolved.mask, masks[region.frame])

    on_frame = call(tools["mask_to_region"], {"handle": handle, "frame": 6})
    assert on_frame.content == f"<region frame=6 mask={handle}>"
    hidden = call(tools["mask_to_region"], {"handle": handle, "frame": 5})
    assert hidden.status == "error" and "not visible on frame 5" in hidden.content and "6-7" in hidden.content


def test_handles_resolve_after_a_restart(stored):
    store, handle, masks, _ = stored
    reopened = MaskStore(store.session_dir)  # a new process would do exactly this
    tools = {t.name: t for t in sama_toolkit(store=reopened)}
    message = call(tools["mask_info"], {"handle": handle, "frames": [4]})
    assert message.artifact["per_frame"][0]["area"] == int(masks[4].sum())


class _BrokenToolPlugin:
    @hookimpl
    def register_tools(self, register):
        def bad_factory(toolkit):
            raise RuntimeError("factory exploded")

        def measure_factory(toolkit: SamaToolkit):
            from langchain_core.tools import StructuredTool

            def mask_frames(handle: str) -> str:
                """How many frames a mask is visible on."""
                return str(len(toolkit.track(handle).frames_present))

            return StructuredTool.from_function(mask_frames)

        register(bad_factory)
        register(measure_factory)


def test_plugin_tools_join_and_a_broken_factory_is_skipped(stored, monkeypatch):
    store, handle, _, _ = stored
    registry = plugins.Registry()
    registry.load_entry_points()
    registry.add_plugin(_BrokenToolPlugin(), "third-party-tools", "sama-extra-tools", "1.0")
    monkeypatch.setattr(plugins, "_REGISTRY", registry)
    toolkit = build_toolkit(store)
    with pytest.warns(UserWarning, match="factory exploded"):
        tools = {t.name: t for t in toolkit.tools()}
    assert "mask_frames" in tools and "mask_info" in tools
    assert tools["mask_frames"].invoke({"handle": handle}) == "7"
    assert any("sama-extra-tools" in failure and "bad_factory" in failure for failure in toolkit.failures)
