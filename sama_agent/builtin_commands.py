"""Placeholder until the built-in commands land."""
