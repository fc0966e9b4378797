"""Reading JSON files with errors that name the file and say what was wrong."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def read_json(path: str | Path, error: type[Exception], *, missing: str, expected: type | None = None, expected_what: str = "") -> Any:
    """Parse `path`; raise `error` naming the file when it is missing (`missing` says what to do),
    is not UTF-8 JSON, or (given `expected`) holds another JSON type than `expected_what`."""
    path = Path(path)
    if not path.is_file():
        raise error(f"{path}: {missing}")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise error(f"{path}: not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg}).") from None
    except UnicodeDecodeError as exc:
        raise error(f"{path}: not UTF-8 text ({exc.reason}).") from None
    if expected is not None and not isinstance(data, expected):
        raise error(f"{path}: expected {expected_what}, found a JSON {type(data).__name__}.")
    return data
