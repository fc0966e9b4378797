"""The sama-flow-segmenter plugin (plugins/sama-flow-segmenter) on real decoded video.

Install it first: pip install -e plugins/sama-flow-segmenter
"""
from __future__ import annotations

import importlib.metadata as metadata

import cv2
import numpy as np
import pytest
from PIL import Image

from sama_agent.errors import RegionError
from sama_agent.evaluation.metrics import j_and_f
from sama_agent.masks import mask_box
from sama_agent.plugins import get_registry
from sama_agent.regions import Region
from sama_agent.segmenters import adapt_prompts, segment
from sama_agent.video import Video

sama_flow_segmenter = pytest.importorskip(
    "sama_flow_segmenter", reason="the flow segmenter plugin is not installed: pip install -e plugins/sama-flow-segmenter"
)
FlowSegmenter = sama_flow_segmenter.FlowSegmenter

FRAMES = 48
SIZE = (144, 192)  # height, width


# ---- a synthetic clip with exact masks ------------------------------------------------
def _textured(rng, height, width):
    """Smooth colour fields, grain and scattered blocks: texture for the flow to latch onto."""
    coarse = rng.uniform(40, 200, (6, 8, 3)).astype(np.float32)
    image = cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC)
    image += rng.normal(0, 18, (height, width, 1)).astype(np.float32)
    for _ in range(25):
        x, y = rng.integers(0, width - 10), rng.integers(0, height - 10)
        w, h = rng.integers(4, 18, 2)
        image[y : y + h, x : x + w] = rng.uniform(30, 220, 3)
    return np.clip(image, 0, 255)


def _objects(t, height, width, camouflage):
    """(mask, texture) per object at frame t, front to back: a growing striped ellipse
    on a wave, a rotating checkered square, and a disc wearing background-like texture."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    u, v = xx - (30 + 2.2 * t), yy - (height * 0.4 + 12 * np.sin(t / 8))
    grow = 1 + 0.01 * t
    ellipse = (u / (22 * grow)) ** 2 + (v / (15 * grow)) ** 2 <= 1
    stripes = (np.floor((u + v) / 5) % 2)[..., None]
    ellipse_tex = stripes * np.array([235, 140, 30]) + (1 - stripes) * np.array([150, 40, 40])

    angle = 0.04 * t
    du, dv = xx - (width - 40 - 1.8 * t), yy - (height * 0.72 - 0.5 * t)
    ru, rv = np.cos(angle) * du + np.sin(angle) * dv, -np.sin(angle) * du + np.cos(angle) * dv
    square = (np.abs(ru) <= 16) & (np.abs(rv) <= 16)
    checks = ((np.floor(ru / 6) + np.floor(rv / 6)) % 2)[..., None]
    square_tex = checks * np.array([40, 90, 230]) + (1 - checks) * np.array([230, 220, 60])

    cx, cy = width * 0.55, 28 + 1.2 * t
    disc = (xx - cx) ** 2 + (yy - cy) ** 2 <= 14**2
    disc_tex = np.zeros((height, width, 3))
    top, left = int(round(cy)) - 14, int(round(cx)) - 14
    y0, x0, y1, x1 = max(0, top), max(0, left), min(height, top + 29), min(width, left + 29)
    disc_tex[y0:y1, x0:x1] = camouflage[y0 - top : y1 - top, x0 - left : x1 - left]
    return [(ellipse, ellipse_tex), (square, square_tex), (disc, disc_tex)]


def write_synthetic_clip(folder, frames=FRAMES, size=SIZE, seed=0):
    """A frame folder: three moving objects over a textured background, a panning
    camera, changing light and sensor noise. Returns (Video, masks (3, T, H, W) bool),
    the masks exact (occlusion included: object 0 is in front)."""
    rng = np.random.default_rng(seed)
    height, width = size
    scenery = _textured(rng, height + 30, width + 60)
    camouflage = _textured(np.random.default_rng(seed + 1), 60, 80)[10:39, 10:39] * 0.8 + 30
    masks = np.zeros((3, frames, height, width), bool)
    folder.mkdir(parents=True, exist_ok=True)
    for t in range(frames):
        dx, dy = int(round(1.0 * t)), int(round(0.5 * t))
        image = scenery[dy : dy + height, dx : dx + width].copy()
        layers = _objects(t, height, width, camouflage)
        for mask, texture in reversed(layers):
            image[mask] = texture[mask]
        covered = np.zeros((height, width), bool)
        for i, (mask, _) in enumerate(layers):
            masks[i, t] = mask & ~covered
            covered |= mask
        image = image * (1.0 + 0.12 * np.sin(t / 10)) + rng.normal(0, 4, image.shape)
        Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(folder / f"{t:05d}.png")
    return Video(folder, fps=10), masks


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    return write_synthetic_clip(tmp_path_factory.mktemp("synthetic"))


def _jf(tracks, masks, objects):
    predicted = np.stack([tracks[i].to_array(masks.shape[1]) for i in objects])
    return j_and_f(predicted, masks[list(objects)])


# ---- quality ----------------------------------------------------------------------------
def test_first_frame_masks_propagate_over_48_frames(synthetic):
    video, masks = synthetic
    tracks = FlowSegmenter().segment(video, {i: [Region(frame=0, mask=masks[i, 0])] for i in range(3)})
    scores = _jf(tracks, masks, range(3))
    print("first-frame masks: J&F", round(scores.mean_jf, 3), "per object", np.round(scores.jf, 3))
    assert scores.mean_jf >= 0.70
    assert scores.jf[:2].min() >= 0.9  # the two distinctly coloured objects are followed closely


def test_prompt_in_the_middle_propagates_both_ways(synthetic):
    video, masks = synthetic
    tracks = FlowSegmenter().segment(video, {i: [Region(frame=24, mask=masks[i, 24])] for i in range(3)})
    assert all(track.frames == list(range(FRAMES)) for track in tracks.values())
    scores = _jf(tracks, masks, range(3))
    first_half = j_and_f(np.stack([tracks[i].to_array(FRAMES)[:24] for i in range(2)]), masks[:2, :24])
    print("middle-frame masks: J&F", round(scores.mean_jf, 3), "backward half", round(first_half.mean_jf, 3))
    assert scores.mean_jf >= 0.70
    assert first_half.mean_jf >= 0.85  # the backward pass follows the objects too


def test_box_and_point_prompts_are_refined_with_grabcut(synthetic):
    video, masks = synthetic
    ys, xs = np.nonzero(masks[1, 0])
    centre = (float(np.median(xs)), float(np.median(ys)))
    prompts = {0: [Region(frame=0, box=mask_box(masks[0, 0]))], 1: [Region(frame=0, points=(centre,), labels=(1,))]}
    tracks = FlowSegmenter().segment(video, prompts)
    key = [tracks[i].mask(0) for i in range(2)]
    key_iou = [(k & masks[i, 0]).sum() / (k | masks[i, 0]).sum() for i, k in enumerate(key)]
    box_area = np.prod(np.subtract(mask_box(masks[0, 0])[2:], mask_box(masks[0, 0])[:2]))
    assert key[0].sum() < 0.9 * box_area  # GrabCut cut the ellipse out of its box
    assert min(key_iou) >= 0.75, key_iou
    assert _jf(tracks, masks, range(2)).mean_jf >= 0.80


def test_two_prompts_on_one_object_are_blended(synthetic):
    video, masks = synthetic
    one = FlowSegmenter().segment(video, {2: [Region(frame=0, mask=masks[2, 0])]})
    two = FlowSegmenter().segment(video, {2: [Region(frame=0, mask=masks[2, 0]), Region(frame=47, mask=masks[2, 47])]})
    assert np.array_equal(two[2].mask(47), masks[2, 47])  # a mask prompt is kept as given
    assert _jf(two, masks, [2]).mean_jf > _jf(one, masks, [2]).mean_jf


def test_requested_frames_and_exact_repeats(synthetic):
    video, masks = synthetic
    segmenter = FlowSegmenter()
    prompts = {0: [Region(frame=30, box=mask_box(masks[0, 30]))]}
    subset = dict(segmenter.propagate(video, prompts, frames=[3, 29, 40]))
    assert sorted(subset) == [3, 29, 40]
    assert list(segmenter.propagate(video, prompts, frames=[])) == []
    full = segmenter.segment(video, prompts)
    for t, found in subset.items():
        assert np.array_equal(found[0], full[0].mask(t))  # same answer however the frames are asked for


# ---- a real video file ----------------------------------------------------------------
def write_moving_disc_mp4(path, frames, size=(240, 320), radius=26):
    """An mpeg4 file: a textured red disc crossing a textured scene. Returns the
    exact disc masks (T, H, W)."""
    height, width = size
    rng = np.random.default_rng(5)
    scene = _textured(rng, height, width).astype(np.uint8)
    yy, xx = np.mgrid[0:height, 0:width]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 25.0, (width, height))
    masks = np.zeros((frames, height, width), bool)
    for t in range(frames):
        phase = 2 * np.pi * t / frames
        cx, cy = width / 2 + 0.32 * width * np.cos(phase), height / 2 + 0.25 * height * np.sin(2 * phase)
        masks[t] = (xx - cx) ** 2 + (yy - cy) ** 2 <= radius**2
        frame = scene.copy()
        dots = ((xx // 6 + yy // 6) % 2).astype(bool)
        frame[masks[t] & dots] = (210, 40, 40)
        frame[masks[t] & ~dots] = (160, 20, 60)
        writer.write(np.ascontiguousarray(frame[:, :, ::-1]))  # OpenCV writes BGR
    writer.release()
    return masks


def test_box_on_a_real_video_file_gives_a_mask_on_every_frame(tmp_path):
    path = tmp_path / "disc.mp4"
    masks = write_moving_disc_mp4(path, frames=60)
    video = Video(path)
    assert video.num_frames == 60
    box = mask_box(masks[20])
    tracks = FlowSegmenter().segment(video, {1: [Region(frame=20, box=box)]})
    track = tracks[1]
    assert track.frames == list(range(60))
    assert track.frames_present == list(range(60))
    ious = np.array([(track.mask(t) & masks[t]).sum() / (track.mask(t) | masks[t]).sum() for t in range(60)])
    print("mp4 box prompt: mean IoU", round(ious.mean(), 3), "worst", round(ious.min(), 3))
    assert ious.mean() >= 0.75 and ious.min() >= 0.4


def test_streaming_holds_a_bounded_number_of_frames(tmp_path):
    """Count decoded frames alive at once on a clip and on one ten times longer."""
    peaks = {}
    for frames in (30, 300):
        path = tmp_path / f"disc_{frames}.mp4"
        masks = write_moving_disc_mp4(path, frames=frames, size=(72, 96), radius=10)
        video = _CountingVideo(path)
        middle = frames // 2
        for _ in FlowSegmenter(chunk=6).propagate(video, {1: [Region(frame=middle, mask=masks[middle])]}):
            pass
        assert video.decoded == frames + 1  # each pass reads its frames once; only the prompted frame twice
        peaks[frames] = video.peak_alive
    print("decoded frames alive at once:", peaks)
    assert peaks[300] == peaks[30] <= 2 * 6


class _CountingVideo(Video):
    """A real Video that counts how many decoded frames are alive at once."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.alive = self.peak_alive = self.decoded = 0

    def frames(self, indices):
        import weakref

        batch = super().frames(indices)
        count = len(batch)
        self.alive += count
        self.decoded += count
        self.peak_alive = max(self.peak_alive, self.alive)
        weakref.finalize(batch, self._released, count)
        return batch

    def _released(self, count):
        self.alive -= count


# ---- errors ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def small(tmp_path_factory):
    return write_synthetic_clip(tmp_path_factory.mktemp("small"), frames=6)


def test_box_outside_the_frame_says_so(small):
    video, _ = small
    with pytest.raises(RegionError, match=r"outside the 192x144 frame"):
        FlowSegmenter().propagate(video, {1: [Region(frame=2, box=(150.0, 10.0, 230.0, 60.0))]})


def test_point_outside_the_frame_says_so(small):
    video, _ = small
    with pytest.raises(RegionError, match=r"point \(200,5\) lies outside"):
        FlowSegmenter().propagate(video, {1: [Region(frame=0, points=((200.0, 5.0),), labels=(1,))]})


def test_empty_mask_says_choose_another_frame(small):
    video, _ = small
    with pytest.raises(RegionError, match="mask is empty on frame 3; choose a frame where the object is visible"):
        FlowSegmenter().propagate(video, {1: [Region(frame=3, mask=np.zeros(SIZE, bool))]})


def test_embedding_prompt_is_refused_naming_what_is_accepted(small):
    import torch

    video, _ = small
    with pytest.raises(RegionError, match="does not accept embedding prompts; it accepts box, mask, points"):
        FlowSegmenter().propagate(video, {1: [Region(frame=0, embedding=torch.zeros(256))]})


def test_only_negative_points_ask_for_a_positive_one(small):
    video, _ = small
    with pytest.raises(RegionError, match=r"every point is negative.*add a positive point"):
        FlowSegmenter().propagate(video, {1: [Region(frame=0, points=((20.0, 20.0),), labels=(0,))]})


@pytest.mark.parametrize("option", [{"flow": "lucas"}, {"work_size": 8}, {"band": 0}, {"chunk": 0}])
def test_bad_options_are_named(option):
    name = next(iter(option))
    with pytest.raises(ValueError, match=f"option {name}="):
        FlowSegmenter(**option)


# ---- the host's embedding fallback ----------------------------------------------------
class _ColourPrototypeHead:
    """A small real torch grounding head: a linear map turns the 256-d prompt into two
    colour prototypes; pixels near either (sigmoid of the negative distance) are the mask."""

    def __init__(self):
        import torch

        self.torch = torch
        self.to_colours = torch.nn.Linear(256, 6)
        with torch.no_grad():
            self.to_colours.weight.zero_()
            self.to_colours.weight[:, :6] = torch.eye(6)
            self.to_colours.bias.zero_()
        self.sharpness, self.radius = 40.0, 0.12
        self.calls = 0

    def __call__(self, video, region) -> np.ndarray:
        torch = self.torch
        self.calls += 1
        with torch.no_grad():
            prototypes = self.to_colours(region.embedding.float()).reshape(2, 1, 1, 3)
            pixels = torch.from_numpy(video.frame(region.frame)).float() / 255.0
            distance = (pixels[None] - prototypes).norm(dim=-1).min(dim=0).values
            probability = torch.sigmoid(self.sharpness * (self.radius - distance))
        return (probability > 0.5).numpy()


def test_host_decodes_embeddings_into_key_frame_masks_for_the_flow_segmenter(synthetic):
    import torch

    video, masks = synthetic
    head = _ColourPrototypeHead()
    stripes = torch.zeros(256)
    stripes[:6] = torch.tensor([235.0, 140.0, 30.0, 150.0, 40.0, 40.0]) / 255.0  # the ellipse's two stripe colours
    prompts = {0: [Region(frame=10, embedding=stripes)]}
    segmenter = FlowSegmenter()

    with pytest.raises(RegionError, match="does not accept embedding"):
        segmenter.segment(video, prompts)
    adapted = adapt_prompts(segmenter, video, prompts, head)
    assert [r.kinds for r in adapted[0]] == [{"mask"}] and head.calls == 1
    decoded = adapted[0][0].mask
    assert decoded.any() and (decoded & masks[0, 10]).sum() >= 0.8 * decoded.sum()  # the head found the ellipse

    tracks = segment(segmenter, video, prompts, decode_embedding=head)
    assert np.array_equal(tracks[0].mask(10), decoded)  # the segmenter got the decoded mask as its prompt
    key_iou = (decoded & masks[0, 10]).sum() / (decoded | masks[0, 10]).sum()
    print("decoded key mask IoU", round(key_iou, 3), "track J&F", round(_jf(tracks, masks, [0]).mean_jf, 3))
    assert _jf(tracks, masks, [0]).mean_jf >= 0.8 * key_iou  # and kept to the ellipse through the clip


# ---- installation and the plugin host -------------------------------------------------
def test_installed_distribution_registers_the_flow_segmenter():
    registry = get_registry(refresh=True)
    assert "flow" in registry.names("segmenter")
    component = registry.get("segmenter", "flow")
    assert component.distribution == "sama-flow-segmenter"
    assert component.version == metadata.version("sama-flow-segmenter")
    assert not [f for f in registry.failures if f.distribution == "sama-flow-segmenter"]
    built = registry.create("segmenter", "flow", work_size=256, flow="farneback")
    assert isinstance(built, FlowSegmenter) and built.work_size == 256
    assert built.prompt_kinds == {"box", "points", "mask"}
