"""sama-flow-segmenter: a segmenter plugin for sama-agent that needs no trained
weights. GrabCut turns a box, points or a mask on any frame into an object
mask; dense optical flow carries it through the clip in both directions and a
colour graph cut keeps its edge on the object, streaming frame by frame."""
from .segmenter import FlowSegmenter

__all__ = ["FlowSegmenter", "__version__"]
__version__ = "0.1.0"
