"""Errors a user can fix: they name the file, the row (line) and the field."""

from __future__ import annotations

import contextlib
import math
import numbers
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
    """An integer (numpy's too), or a string of one (Hydra reads `seed=01` as '01')."""
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        return int(value)
    if isinstance(value, str):
        with contextlib.suppress(ValueError):
            return int(value.strip())
    raise KvbenchError(f"{key} must be an integer, got {value!r}")


def number(key: str, value: Any) -> float:
    """A finite real number (numpy's too)."""
    if isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    raise KvbenchError(f"{key} must be a finite number, got {value!r}")


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
