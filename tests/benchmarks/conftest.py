"""Benchmarks live in bench_*.py so the ordinary test run never collects them.

When benchmarks are asked for (`--benchmark-only` or `--benchmark-enable`),
collect bench_*.py from this folder too, so one command runs them all:

    pytest tests/benchmarks --benchmark-only --benchmark-json=bench.json
"""
import os

import pytest


def pytest_collect_file(file_path, parent):
    config = parent.config
    wanted = config.getoption("benchmark_only", False) or config.getoption("benchmark_enable", False)
    if wanted and file_path.suffix == ".py" and file_path.name.startswith("bench_"):
        if file_path in {path for path in map(_as_path, config.args)}:
            return None  # named on the command line: pytest collects it already
        return pytest.Module.from_parent(parent, path=file_path)
    return None


def _as_path(arg):
    from pathlib import Path

    return Path(arg.split("::")[0]).resolve()


@pytest.fixture(scope="module", autouse=True)
def bench_threads():
    """SAMA_BENCH_THREADS pins torch's thread count for steadier figures on a shared machine."""
    import torch

    wanted = os.environ.get("SAMA_BENCH_THREADS")
    before = torch.get_num_threads()
    if wanted:
        torch.set_num_threads(int(wanted))
    yield
    torch.set_num_threads(before)
