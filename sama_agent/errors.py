"""Errors the user sees. Each message says what was wrong and what to do."""


class SamaError(Exception):
    """Base class for every error sama-agent reports to a user or an agent."""


class VideoError(SamaError):
    """A video file or frame folder cannot be read."""


class RegionError(SamaError):
    """A region prompt is malformed or does not fit the video."""


class MaskHandleError(SamaError):
    """A mask handle is unknown, or an export would leave its directory."""


class RecordError(SamaError):
    """A SAMA-239K / SAMA-Bench record or mask dict is invalid."""


class PluginError(SamaError):
    """A plugin failed to load or broke its protocol."""


class CheckpointError(SamaError):
    """A checkpoint is missing, tampered with, or does not fit the model."""
