"""The flow segmenter plugin against sama-agent's segmenter conformance kit."""
import pytest

from sama_agent.plugins import get_registry
from sama_agent.testing import SegmenterConformance

pytest.importorskip("sama_flow_segmenter", reason="the flow segmenter plugin is not installed: pip install -e plugins/sama-flow-segmenter")


class TestFlowSegmenterConformance(SegmenterConformance):
    @pytest.fixture
    def segmenter(self):
        # built the way the host builds it: through the registry, from the entry point
        return get_registry(refresh=True).create("segmenter", "flow")


class TestFlowSegmenterConformanceFarneback(SegmenterConformance):
    @pytest.fixture
    def segmenter(self):
        from sama_flow_segmenter import FlowSegmenter

        return FlowSegmenter(flow="farneback", work_size=64)
