"""A small typed reader over parsed TOML that collects every problem instead of stopping at the first."""

from __future__ import annotations

import difflib
import ipaddress
import re
from collections.abc import Callable
from typing import Any

from hacontrol.config.schema import IPInterface, IPNetwork, Secret
from hacontrol.core.problems import Problem

MISSING: Any = object()

# Set by tests/unit/test_config_reference.py to learn every key the loader reads (indices stripped), so
# that docs/configuration.md can be checked against the loader itself.
key_observer: Callable[[str], None] | None = None


class Section:
    """One TOML table, addressed by its dotted path (``target[0].lun[2]``)."""

    def __init__(self, data: object, path: str, problems: list[Problem]):
        self.path = path
        self.problems = problems
        self._seen: set[str] = set()
        if isinstance(data, dict):
            self.data: dict[str, Any] = data
        else:
            self.data = {}
            if data is not None:
                self.problem("", data, "must be a table", f"write it as [{path}] or {{ key = value }}")

    def _note(self, name: str) -> None:
        if key_observer is not None:
            key_observer(re.sub(r"\[\d+\]", "", self.key(name)))

    def key(self, name: str) -> str:
        if not name:
            return self.path or "<top>"
        return f"{self.path}.{name}" if self.path else name

    def problem(self, name: str, value: object, message: str, fix: str) -> None:
        self.problems.append(Problem(self.key(name), value, message, fix))

    def has(self, name: str) -> bool:
        return name in self.data

    def _raw(self, name: str, default: Any, fix: str) -> Any:
        self._note(name)
        self._seen.add(name)
        if name in self.data:
            return self.data[name]
        if default is MISSING:
            self.problem(name, None, "is required", fix or f"add {name} = ...")
            return None
        return default

    def _typed(self, name: str, default: Any, kinds: tuple[type, ...], what: str, example: str) -> Any:
        value = self._raw(name, default, f"add {name} = {example}")
        if value is default or value is None:
            return value
        if isinstance(value, bool) and bool not in kinds:
            self.problem(name, value, f"must be {what}", f"write for example {name} = {example}")
            return None if default is MISSING else default
        if not isinstance(value, kinds):
            self.problem(name, value, f"must be {what}", f"write for example {name} = {example}")
            return None if default is MISSING else default
        return value

    def str(self, name: str, default: Any = MISSING, *, example: str = '"..."',
            choices: tuple[str, ...] = ()) -> Any:
        value = self._typed(name, default, (str,), "a string", example)
        if isinstance(value, str) and choices and value not in choices:
            self.problem(name, value, "is not one of " + ", ".join(choices),
                         f"use one of: {', '.join(choices)}{_did_you_mean(value, choices)}")
            return None if default is MISSING else default
        return value

    def int(self, name: str, default: Any = MISSING, *, lo: int | None = None, hi: int | None = None) -> Any:
        value = self._typed(name, default, (int,), "a whole number", str(lo if lo is not None else 1))
        out_of_range = isinstance(value, int) and not isinstance(value, bool) and (
            (lo is not None and value < lo) or (hi is not None and value > hi))
        if out_of_range:
            self.problem(name, value, f"is outside {lo}–{hi}", f"choose a value from {lo} to {hi}")
            return None if default is MISSING else default
        return value

    def float(self, name: str, default: Any = MISSING) -> Any:
        value = self._typed(name, default, (int, float), "a number", "1.0")
        return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else value

    def bool(self, name: str, default: Any = MISSING) -> Any:
        return self._typed(name, default, (bool,), "true or false", "true")

    def strs(self, name: str, default: Any = MISSING, *, example: str = '["..."]') -> Any:
        value = self._typed(name, default, (list,), "a list of strings", example)
        if isinstance(value, list):
            bad = [v for v in value if not isinstance(v, str)]
            if bad:
                self.problem(name, value, "must contain only strings", f"write for example {name} = {example}")
                return None if default is MISSING else default
            return tuple(value)
        return value

    def ints(self, name: str) -> tuple[int, ...] | None:
        """An optional list of whole numbers (None when absent)."""
        self._note(name)
        self._seen.add(name)
        if name not in self.data:
            return None
        value = self.data[name]
        if not isinstance(value, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
            self.problem(name, value, "must be a list of whole numbers", f"write e.g. {name} = [0, 1]")
            return None
        return tuple(value)

    def secret(self, name: str, default: Any = MISSING) -> Any:
        self._note(name)
        self._seen.add(name)
        if name not in self.data:
            if default is MISSING:
                self.problem(name, None, "is required", f'add {name} = "..." (12–16 characters)')
            return default
        value = self.data[name]
        if not isinstance(value, str):
            # Never echo what might be a secret, even a malformed one.
            self.problems.append(Problem(self.key(name), "***", "must be a string", f'write {name} = "..."'))
            return None
        return Secret(value)

    def interface_address(self, name: str, default: Any = MISSING) -> IPInterface | None:
        value = self.str(name, default, example='"192.0.2.10/24"')
        if not isinstance(value, str):
            return value
        if "/" not in value:
            self.problem(name, value, "needs a prefix length", f'write it as "{value}/24" (or the right prefix)')
            return None
        try:
            return ipaddress.ip_interface(value)
        except ValueError as exc:
            self.problem(name, value, f"is not an IP address with prefix ({exc})", 'write e.g. "192.0.2.10/24"')
            return None

    def networks(self, name: str) -> tuple[IPNetwork, ...]:
        values = self.strs(name, (), example='["192.0.2.0/24"]')
        out: list[IPNetwork] = []
        for v in values or ():
            try:
                out.append(ipaddress.ip_network(v, strict=True))
            except ValueError as exc:
                self.problem(name, v, f"is not a network ({exc})", 'write e.g. "192.0.2.0/24" with host bits zero')
        return tuple(out)

    def table(self, name: str, required: bool = False) -> Section | None:
        self._seen.add(name)
        if name not in self.data:
            if required:
                self.problem(name, None, "is required", f"add a [{self.key(name)}] table")
            return None
        return Section(self.data[name], self.key(name), self.problems)

    def tables(self, name: str) -> list[Section]:
        self._seen.add(name)
        value = self.data.get(name, [])
        if isinstance(value, dict):
            value = [value]
        if not isinstance(value, list):
            self.problem(name, value, "must be an array of tables", f"write each entry as [[{self.key(name)}]]")
            return []
        return [Section(v, f"{self.key(name)}[{i}]", self.problems) for i, v in enumerate(value)]

    def check(self, name: str, value: Any, error: Callable[[Any], str | None], fix: str) -> bool:
        if value is None:
            return False
        message = error(value)
        if message:
            self.problem(name, value, message, fix)
            return False
        return True

    def finish(self) -> None:
        """Report keys nobody asked for: usually a typo that would silently fall back to a default."""
        for name in self.data:
            if name not in self._seen:
                known = sorted(self._seen)
                self.problem(name, self.data[name] if not _looks_secret(name) else "***", "is not a known key",
                             "remove it or correct the spelling" + _did_you_mean(name, known))


def _did_you_mean(word: str, choices: Any) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _looks_secret(name: str) -> bool:
    return "secret" in name or "password" in name
