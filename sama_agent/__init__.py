"""sama-agent: referentially grounded video chat on a pluggy plugin host."""

__version__ = "0.1.0"
