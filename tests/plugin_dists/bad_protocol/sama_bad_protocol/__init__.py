"""A plugin whose segmenter breaks the protocol (no propagate, unknown prompt kind)."""
from sama_agent.hookspecs import hookimpl


class LaserSegmenter:
    name = "lasers"
    prompt_kinds = frozenset({"lasers"})

    def segment(self, video, prompts, frames=None):
        return {}


@hookimpl
def register_segmenters(register):
    register(LaserSegmenter)
