"""The entry point sama-agent loads (group `sama_agent`, see pyproject.toml)."""
from sama_agent.hookspecs import hookimpl

from .segmenter import FlowSegmenter


@hookimpl
def register_segmenters(register):
    register(FlowSegmenter)
