"""The per-session SAM2 feature cache: same features as encoding afresh, bounded memory."""
import numpy as np
import pytest
import torch

from session_helpers import one_torch_thread, square_clip_mp4, trained_model_dir  # noqa: F401 (fixture)
from sama_agent.feature_cache import CachedEncoding
from sama_agent.regions import Region
from sama_agent.video import Video


@pytest.fixture(scope="module")
def grounding():
    from sama_agent.model.modeling.sama import SamaModel

    return SamaModel.from_pretrained(trained_model_dir()).sam2


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    path, _, masks = square_clip_mp4(tmp_path_factory.mktemp("clip") / "square.mp4", frames=8)
    return Video(path), masks


def _same(a, b):
    return all(torch.allclose(x, y, atol=1e-5) for x, y in zip(a.vision_feats + a.vision_pos, b.vision_feats + b.vision_pos))


def test_cached_features_equal_fresh_ones_and_each_frame_is_encoded_once(grounding, video):
    clip, _ = video
    cache = CachedEncoding(grounding)
    assert cache.warm(clip) == clip.num_frames and cache.misses == clip.num_frames
    frames = clip.frames([5, 2, 5])
    with torch.no_grad():
        fresh = grounding.encode_uint8(frames)
    cached = cache.encode_uint8(frames)
    assert cache.misses == clip.num_frames and cache.hits == 3
    assert len(cached) == 3 and _same(cached, fresh)
    assert not any(t.requires_grad for t in cached.vision_feats)


def test_propagation_through_the_cache_gives_the_same_masks(grounding, video):
    from sama_agent.model.segmenter import Sam2Segmenter

    clip, masks = video
    prompts = {0: [Region(frame=3, mask=masks[3])]}
    plain = dict(Sam2Segmenter(grounding=grounding).propagate(clip, prompts))
    cache = CachedEncoding(grounding)
    cache.warm(clip)
    cached = dict(Sam2Segmenter(grounding=cache).propagate(clip, prompts))
    assert cache.misses == clip.num_frames  # propagation read only the cache
    assert sorted(cached) == sorted(plain) == list(range(clip.num_frames))
    agreement = np.mean([(cached[f][0] == plain[f][0]).mean() for f in plain])
    assert agreement > 0.999


def test_following_a_region_through_the_cache_gives_the_same_masks(grounding, video):
    clip, masks = video
    region = Region(frame=3, box=(10.0, 10.0, 60.0, 50.0))
    plain = grounding.follow(clip, region)
    cache = CachedEncoding(grounding)
    cache.warm(clip)
    cached = cache.follow(clip, region)
    assert cache.misses == clip.num_frames and cache.hits == clip.num_frames  # every frame read from the cache
    assert sorted(cached) == sorted(plain) == list(range(clip.num_frames))
    assert np.mean([(cached[f] == plain[f]).mean() for f in plain]) > 0.999


def test_the_cache_stays_within_its_budget(grounding, video):
    clip, _ = video
    probe = CachedEncoding(grounding)
    probe.encode_uint8(clip.frames([0]))
    per_frame = probe.cached_bytes
    cache = CachedEncoding(grounding, budget_bytes=3 * per_frame)
    assert cache.warm(clip) == 1  # the clip does not fit: only the probe frame 0 was encoded
    cache.encode_uint8(clip.frames([0, 1, 2, 3, 4]))  # 0 is a hit, 1-4 are encoded
    assert (cache.hits, cache.misses) == (1, 5)
    assert len(cache) == 3 and cache.cached_bytes <= 3 * per_frame  # 2, 3, 4 kept
    cache.encode_uint8(clip.frames([4]))
    assert (cache.hits, cache.misses) == (2, 5)
    cache.encode_uint8(clip.frames([0]))  # evicted: encoded again
    assert (cache.hits, cache.misses) == (2, 6)


@pytest.mark.parametrize("propagation", ["memory", "per_frame"])
def test_a_session_answers_exactly_as_the_plain_predictor(propagation, video, tmp_path):
    """The cache changes where features come from, not the masks: in both propagation modes the
    session's tracks match the predictor's own, and later turns encode nothing."""
    from session_helpers import SQUARE_QUESTION
    from sama_agent.model.modeling.sama import SamaModel
    from sama_agent.model.predictor import SamaPredictor
    from sama_agent.session import Session, feature_cache_of

    clip, _ = video
    model = SamaModel.from_pretrained(trained_model_dir(), propagation=propagation)
    session = Session.open(clip, model=model, session_dir=tmp_path, progress=False)
    cache = feature_cache_of(session.answerer)
    plain = SamaPredictor(model)
    plain.set_video(clip)
    for question in (SQUARE_QUESTION, "what is <region frame=3 box=20,30,60,70> doing ?"):
        answer = session.ask(question)
        text, regions = session.prepare(question)
        expected = plain.ask(text, regions)
        assert answer.raw == expected.raw
        assert len(answer.handles) == len(expected.tracks) >= 1
        for handle, track in zip(answer.handles, expected.tracks):
            ours, theirs = session.store.get(handle).to_array(clip.num_frames), track.to_array(clip.num_frames)
            assert (ours == theirs).mean() > 0.999
    assert cache.misses == clip.num_frames
