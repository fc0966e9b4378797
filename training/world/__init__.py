"""A procedurally generated video world written in the SAMA-239K format.

    from sama_agent.training.world import generate_world
    generate_world("data/world", num_videos=100, split="train", seed=0, size=128, frames=(16, 32))

or `python -m sama_agent.training.world data/world --videos 100 --split train`.
See generator.py for the layout, vocabulary.py for the held-out rule.
"""
from .generator import GENERATOR_VERSION, SPLIT_CODES, WorldSettings, generate_world, load_spec, make_video, render_video_mp4, write_mp4
from .language import TURN_KINDS, world_texts
from .scoring import Verdict, check_answer, score_records
from .scene import BackgroundSpec, ObjectSpec, Phase, RenderedVideo, VideoSpec, render, render_background, shape_mask
from .vocabulary import COLOURS, MOTIONS, SHAPES, SIZES, SPLIT_RULE, SPLITS, TEXTURES, combos, is_heldout

__all__ = [
    "GENERATOR_VERSION", "SPLIT_CODES", "WorldSettings", "generate_world", "load_spec", "make_video", "render_video_mp4",
    "write_mp4", "TURN_KINDS", "BackgroundSpec", "ObjectSpec", "Phase", "RenderedVideo", "VideoSpec", "render",
    "render_background", "shape_mask", "COLOURS", "MOTIONS", "SHAPES", "SIZES", "SPLIT_RULE", "SPLITS", "TEXTURES",
    "combos", "is_heldout", "world_texts", "Verdict", "check_answer", "score_records",
]
