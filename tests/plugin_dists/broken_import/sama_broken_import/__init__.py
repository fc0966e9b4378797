"""A plugin that fails on import."""
raise ImportError("sama_broken_import needs a library that is not installed")
