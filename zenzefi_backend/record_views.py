"""A record shown together with values that are not its columns."""
from __future__ import annotations

from typing import Any


class RecordView:
    """A dataclass base: a `record` (a model row) plus fields of its own — a secret that exists only in one response,
    counts computed for a page. A schema dumps both; every other attribute is read from the record."""

    record: Any

    def __getattr__(self, name: str) -> Any:
        if name == "record":  # not set yet (copy, unpickling): no recursion
            raise AttributeError(name)
        return getattr(self.record, name)
