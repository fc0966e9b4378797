"""Files shipped inside the package: the default checkpoint and the sample video.

Paths are resolved in `sama_agent.defaults`; nothing here is imported for its code.
"""
