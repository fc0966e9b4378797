"""Evaluation: SAMA-Bench-G / -C and Ref-VOS metrics and the `sama-agent bench` runner (see README.md)."""
