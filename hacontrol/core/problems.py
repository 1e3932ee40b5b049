"""A refused setting, described so that an operator can fix it without reading code."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Problem:
    """One reason input is refused: the key, the value, what is wrong and how to fix it."""

    key: str
    value: object
    message: str
    fix: str

    def __str__(self) -> str:
        return f"{self.key} = {self.value!r}: {self.message}; fix: {self.fix}"
