"""Errors a user can fix: they name the file, the row (line) and the field."""

from __future__ import annotations

import sys
from collections.abc import Callable
from functools import wraps
from typing import Any, TypeVar

F = TypeVar("F", bound=Callable[..., object])


class KvbenchError(Exception):
    """Bad input or configuration; shown to the user as one line, without a traceback."""


class InputError(KvbenchError):
    def __init__(
        self, path: object, message: str, row: int | None = None, field: str | None = None
    ):
        where = str(path) + (f", line {row}" if row is not None else "")
        what = f", field {field!r}" if field else ""
        super().__init__(f"{where}{what}: {message}")
        self.path, self.row, self.field = path, row, field


def integer(key: str, value: Any) -> int:
    """An int, or a string of digits (Hydra reads `seed=01` as the string '01')."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lstrip("+-").isdigit():
        return int(value)
    raise KvbenchError(f"{key} must be an integer, got {value!r}")


def number(key: str, value: Any) -> float:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    raise KvbenchError(f"{key} must be a number, got {value!r}")


def exits_cleanly(main: F) -> F:
    """Turn a KvbenchError into `error: ...` on stderr and exit status 2."""

    @wraps(main)
    def wrapper(*args: object, **kwargs: object) -> object:
        try:
            return main(*args, **kwargs)
        except KvbenchError as e:
            print(f"error: {e}", file=sys.stderr)
            sys.exit(2)

    return wrapper  # type: ignore[return-value]
